"""The platform config: one validated, frozen schema for models, pools, tenants and engines.

``fabriek serve``, the Ray Serve app builder, the tests and (later) the Helm chart all
read this schema; nothing else describes a deployment. Library settings pass through
and are checked against the library's own definitions: engine arguments against vLLM's
``AsyncEngineArgs`` fields, deployment options against Ray Serve's ``DeploymentSchema``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from routers import ClassPolicy, IsolationDomain, Tenancy, Tenant, TenantClass, derive_domains
from routers.request_shape import DEFAULT_MAX_EMBEDDING_INPUTS, DEFAULT_MAX_SEQUENCES
from serving.config.admission_specs import LedgerSpec, PoolAdmissionSpec, QuotaSpec
from serving.config.auth_specs import AuthSpec
from serving.config.energy_specs import EnergySpec, PoolEnergySpec, PowerCapSpec
from serving.config.home import DOMAIN_PLACEHOLDER
from serving.config.runtime_specs import DeploymentOptions, GrpcSpec, HttpSpec, IngressSpec, LocalClusterSpec, ServeRuntimeSpec
from serving.config.library_settings import SKIP_LIBRARY_CHECKS, check_engine_args, check_tool_calling

DEFAULT_CONFIG_PATH = Path(__file__).parents[1] / "configs" / "local-cpu.yaml"

# Schemes Ray's CloudMirrorConfig can mirror from; fabriek:// names a model that
# `fabriek models prepare` builds under FABRIEK_HOME.
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")
BUILTIN_SCHEME = "fabriek://"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# vLLM's VLLM_CPU_OMP_THREADS_BIND: CPU lists per rank ("0", "0-3,8", "0-1|2-3") or auto/nobind.
_CPU_LIST = r"\d+(-\d+)?(,\d+(-\d+)?)*"
_THREADS_BIND = re.compile(rf"^(auto|nobind|{_CPU_LIST}(\|{_CPU_LIST})*)$")
# Share of a node's pool resource one engine replica takes: a node advertising
# `pool_<name>: 1` hosts up to 1000 replicas of that pool, and none of any other.
POOL_RESOURCE_PER_REPLICA = 0.001


# Library settings that pass through, checked against the library's own definitions.
EngineArgs = Annotated[dict[str, Any], AfterValidator(check_engine_args)]


def _dns_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} must be lowercase letters, digits and '-'")
    return value


# Pool names and tenant ids name Ray resources, Kubernetes objects and ledger rows.
DnsName = Annotated[str, AfterValidator(_dns_name)]


class ConfigError(ValueError):
    """The platform config is invalid; the message names the path and the fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """A model as clients see it, and where its weights come from."""

    id: str = Field(description="Public model id that clients send as `model`.")
    source: str = Field(description=(
        "fabriek://NAME (prepared by `fabriek models prepare`), an absolute or ./relative "
        "local path, or an object-store URI (s3://, gs://, abfss://, azure://). "
        "Model-hub ids are refused: nothing is fetched from a hub at run time."))
    engine_args: EngineArgs = Field(default_factory=dict, description=(
        "vLLM engine arguments (AsyncEngineArgs field names) for every pool serving it."))

    @field_validator("source")
    @classmethod
    def _source_is_local_or_object_store(cls, value: str) -> str:
        return _local_or_object_store(value, BUILTIN_SCHEME)


def _local_or_object_store(value: str, *schemes: str) -> str:
    if value.startswith(schemes + OBJECT_STORE_SCHEMES):
        return value
    if value.startswith(("/", "./", "../", "~")):
        return value
    raise ValueError(
        f"{value!r} is neither a local path nor an object-store URI; fabriek never "
        "downloads from a model hub. Use an absolute path, ./relative path, "
        f"{''.join(f'{s}NAME, ' for s in schemes)}or one of {', '.join(OBJECT_STORE_SCHEMES)}")


class AdapterSpec(_Frozen):
    """A LoRA adapter a tenant owns (a ministry's fine-tune): only that tenant lists and uses it."""

    id: DnsName = Field(description=(
        "Model id the tenant sends as `model`; unique among all models and adapters."))
    base: str = Field(description="The model (one of the tenant's `models`) the adapter was trained on.")
    source: str = Field(description=(
        "A directory in PEFT's format (adapter_config.json, adapter_model.safetensors): an "
        "absolute or ./relative local path on every engine node of the base model's pools, or "
        "an object-store URI (s3://, gs://, abfss://, azure://), copied onto the node at start. "
        "Never a hub id."))

    @field_validator("source")
    @classmethod
    def _source_is_local_or_object_store(cls, value: str) -> str:
        return _local_or_object_store(value)



class PoolSpec(_Frozen):
    """A group of engine replicas on its own hardware, serving a set of models."""

    name: DnsName = Field(description="Lowercase DNS-style name, e.g. `government`.")
    accelerator: Literal["cpu", "gpu"] = Field(description="Hardware of the pool's replicas.")
    models: list[str] = Field(min_length=1, description="Model ids (from `models`) this pool serves.")
    engine_args: EngineArgs = Field(default_factory=dict, description=(
        "vLLM engine arguments for this pool; they override the model's."))
    deployment: DeploymentOptions = Field(default_factory=lambda: {"num_replicas": 1}, description=(
        "Ray Serve deployment options per engine deployment (num_replicas, "
        "max_ongoing_requests, autoscaling_config, ray_actor_options, ...)."))

    cpu_threads_bind: str | None = Field(None, description=(
        "CPU pools only: cores the pool's vLLM CPU engine binds its threads to, as vLLM's "
        "VLLM_CPU_OMP_THREADS_BIND (e.g. `0`, `2-3`, `0-1|2-3` for two ranks); unset: vLLM's "
        "own choice. Pools sharing a machine get disjoint cores."))
    cpu_nice: int | None = Field(None, ge=-20, le=19, description=(
        "CPU pools only: the niceness of the pool's engine processes (replica, vLLM engine "
        "core and workers), so that on a machine it shares with the platform's own processes "
        "(ingress, admission, Ray) the pool's engine wins its cores when both want them. "
        "Unset: Ray's worker niceness (15). Below that needs CAP_SYS_NICE (root); without it "
        "the engine logs a warning and keeps Ray's."))
    admission: PoolAdmissionSpec = Field(default_factory=PoolAdmissionSpec, description=(
        "Capacity and queue of each engine deployment of the pool."))
    power: PoolEnergySpec = Field(default_factory=PoolEnergySpec, description=(
        "How the pool's engines meter energy, and how far a power cap may cut it."))

    @field_validator("cpu_threads_bind")
    @classmethod
    def _threads_bind(cls, value: str | None) -> str | None:
        if value is not None and not _THREADS_BIND.match(value):
            raise ValueError(f"{value!r} is not a CPU list such as `0`, `0-3,8` or `0-1|2-3`")
        return value

    @model_validator(mode="after")
    def _binding_needs_cpu(self) -> "PoolSpec":
        for setting in ("cpu_threads_bind", "cpu_nice"):
            if getattr(self, setting) is not None and self.accelerator != "cpu":
                raise ValueError(f"{setting} applies to accelerator `cpu` only")
        if self.power.floor > self.admission.max_running:
            raise ValueError(f"power.floor {self.power.floor} is above admission.max_running "
                             f"{self.admission.max_running}")
        return self

    @property
    def ray_resource(self) -> str:
        """The Ray custom resource that nodes of this pool advertise, e.g. ``pool_government``."""
        return f"pool_{self.name}"


class ClassSpec(_Frozen):
    """What every tenant of one class may use."""

    pools: list[str] = Field(min_length=1, description=(
        "Pools (names from `pools`) whose replicas may serve this class; requests of the "
        "class never reach another pool, even when these are down."))
    priority: int = Field(0, description=(
        "vLLM request priority of the class; lower is scheduled first. Non-zero needs "
        "`scheduling_policy: priority` in the engine arguments of the class's pools."))
    max_sequences_per_request: int = Field(DEFAULT_MAX_SEQUENCES, ge=1, le=256, description=(
        "Sequences one request may ask for: `n` (or beam width) times the prompts of a "
        "completions prompt list. Each is a sequence in the engine's batch; they count in the "
        "tenant's reservations, fair share and concurrency."))
    max_embedding_inputs_per_request: int = Field(DEFAULT_MAX_EMBEDDING_INPUTS, ge=1, le=2048, description=(
        "Texts one embeddings request may send (`input` as a list); each is a sequence in the "
        "engine's batch and counts in the tenant's reservations, fair share and concurrency."))
    store_responses: bool = Field(False, description=(
        "Keep the class's Responses API answers (unless a request says `store: false`) in its "
        "domain's own database, so that its tenants can continue a conversation "
        "(`previous_response_id`), retrieve and delete their own responses. Off: nothing is "
        "kept, and `store: true` and `previous_response_id` are refused."))
    responses_kept_s: float = Field(30 * 86_400, gt=0, description=(
        "How long a stored response is kept (default 30 days); then it is gone."))
    max_request_s: float = Field(600.0, gt=0, le=86_400, description=(
        "Longest a request may take, queueing included; then it ends with 504 (gRPC: "
        "DEADLINE_EXCEEDED) and is charged for what it produced."))


class TenantSpec(_Frozen):
    """An organisation that calls the API with its own keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: DnsName = Field(description="Lowercase DNS-style tenant id, e.g. `gov-demo`.")
    tenant_class: TenantClass = Field(alias="class", description=(
        "government, research or commercial; `classes` says which pools each may use."))
    models: list[str] = Field(min_length=1, description="Model ids (from `models`) the tenant may use.")
    quota: QuotaSpec = Field(default_factory=QuotaSpec, description="Rate, concurrency and size limits.")
    weight: float = Field(1.0, gt=0, description=(
        "Fair share within a pool relative to the other tenants there: a tenant of weight 2 "
        "gets twice the running requests of one of weight 1 when both have requests waiting."))
    adapters: list[AdapterSpec] = Field(default_factory=list, description=(
        "LoRA adapters of the tenant's own, served by its class's engines of their base model; "
        "other tenants cannot list or use them (404)."))



class PlatformConfig(_Frozen):
    """A whole fabriek deployment."""

    models: list[ModelSpec] = Field(min_length=1)
    pools: list[PoolSpec] = Field(min_length=1)
    classes: dict[TenantClass, ClassSpec] = Field(default_factory=dict, description=(
        "Per tenant class: the pools it may use and its request priority."))
    tenants: list[TenantSpec] = Field(default_factory=list, description=(
        "Who may call the API; a request with no valid key of a tenant here gets 401."))
    auth: AuthSpec = Field(default_factory=AuthSpec)
    ledger: LedgerSpec = Field(default_factory=LedgerSpec)
    http: HttpSpec = Field(default_factory=HttpSpec)
    grpc: GrpcSpec = Field(default_factory=GrpcSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    serve: ServeRuntimeSpec = Field(default_factory=ServeRuntimeSpec)
    local: LocalClusterSpec = Field(default_factory=LocalClusterSpec)
    energy: EnergySpec = Field(default_factory=EnergySpec)
    power_caps: list[PowerCapSpec] = Field(default_factory=list, description=(
        "Power caps in force from start-up; `fabriek power cap` adds more at run time."))

    @model_validator(mode="after")
    def _references_resolve(self) -> "PlatformConfig":
        _no_duplicates("models", [m.id for m in self.models])
        _no_duplicates("pools", [p.name for p in self.pools])
        known = {m.id for m in self.models}
        for i, pool in enumerate(self.pools):
            for j, model_id in enumerate(pool.models):
                if model_id not in known:
                    raise ValueError(
                        f"pools[{pool.name}].models[{j}]: unknown model {model_id!r}; "
                        f"define it under `models` (known: {sorted(known)})")
        served = {m for p in self.pools for m in p.models}
        for model in self.models:
            if model.id not in served:
                raise ValueError(f"models[{model.id}]: no pool serves it; add it to a pool's models")
        self._check_tenancy()
        self._check_domains()
        _no_duplicates("power_caps", [c.name for c in self.power_caps])
        for cap in self.power_caps:
            self.pools_in_scope(cap.scope)
        return self

    def pools_in_scope(self, scope: str) -> frozenset[str]:
        """The deployed pools a power cap's scope covers (``platform``, ``domain:NAME``, ``pool:NAME``).

        Raises:
            ValueError: the scope names no such domain or pool.
        """
        used = {p for spec in self.classes.values() for p in spec.pools}
        kind, _, name = scope.partition(":")
        if kind == "platform":
            return frozenset(p.name for p in self.pools if p.name in used)
        if kind == "domain":
            for domain in self.domains():
                if domain.name == name:
                    return frozenset(domain.pools)
            raise ValueError(f"power cap scope {scope!r}: no such isolation domain "
                             f"(known: {[d.name for d in self.domains()]})")
        if kind == "pool" and name in used:
            return frozenset({name})
        raise ValueError(f"power cap scope {scope!r}: no such deployed pool (known: {sorted(used)})")

    def _check_domains(self) -> None:
        domains = self.domains()
        if len(domains) < 2:
            return
        names = ", ".join(d.name for d in domains)
        for field_name in self.auth.shared_paths():
            raise ValueError(f"auth.{field_name}: {len(domains)} isolation domains ({names}) would share "
                             f"one file; put {DOMAIN_PLACEHOLDER} in the path so each domain holds only its own")
        if self.ledger.is_shared_by_domains():
            raise ValueError(f"ledger.url: {len(domains)} isolation domains ({names}) would share one "
                             f"database; put {DOMAIN_PLACEHOLDER} in the URL (e.g. the database name)")

    def _check_tenancy(self) -> None:
        pools = {p.name: p for p in self.pools}
        for pool in self.pools:
            for model_id in pool.models:
                try:
                    check_tool_calling({**self.model(model_id).engine_args, **pool.engine_args})
                except ValueError as err:
                    raise ValueError(f"pools[{pool.name}], model {model_id!r}: {err}") from None
        for tenant_class, spec in self.classes.items():
            for i, pool in enumerate(spec.pools):
                if pool not in pools:
                    raise ValueError(f"classes[{tenant_class}].pools[{i}]: unknown pool {pool!r}; "
                                     f"define it under `pools` (known: {sorted(pools)})")
            if spec.priority != 0:
                for pool in spec.pools:
                    for model_id in pools[pool].models:
                        args = {**self.model(model_id).engine_args, **pools[pool].engine_args}
                        if args.get("scheduling_policy") != "priority":
                            raise ValueError(
                                f"classes[{tenant_class}].priority: pool {pool!r} must set engine "
                                "argument `scheduling_policy: priority` for priorities to apply")
        _no_duplicates("tenants", [t.id for t in self.tenants])
        _no_duplicates("models and adapters", [m.id for m in self.models] +
                       [a.id for t in self.tenants for a in t.adapters])
        for tenant in self.tenants:
            spec = self.classes.get(tenant.tenant_class)
            if spec is None:
                raise ValueError(f"tenants[{tenant.id}].class: no entry for class "
                                 f"{str(tenant.tenant_class)!r} under `classes`; add one with its pools")
            for j, model_id in enumerate(tenant.models):
                serving = [p for p in spec.pools if model_id in pools[p].models]
                if not serving:
                    raise ValueError(
                        f"tenants[{tenant.id}].models[{j}]: {model_id!r} is served by no pool of "
                        f"class {str(tenant.tenant_class)!r} (pools {spec.pools}); add it to one of them")
            for adapter in tenant.adapters:
                self._check_adapter(tenant, adapter, [pools[p] for p in spec.pools])

    def _check_adapter(self, tenant: TenantSpec, adapter: AdapterSpec, class_pools: list[PoolSpec]) -> None:
        where = f"tenants[{tenant.id}].adapters[{adapter.id}]"
        if adapter.base not in tenant.models:
            raise ValueError(f"{where}.base: {adapter.base!r} is not one of the tenant's models {tenant.models}")
        for pool in class_pools:
            if adapter.base in pool.models:
                args = {**self.model(adapter.base).engine_args, **pool.engine_args}
                if args.get("runner") == "pooling":
                    raise ValueError(f"{where}.base: {adapter.base!r} is an embedding model; adapters "
                                     "apply to chat and completion models")
                if args.get("enable_lora") is False:
                    raise ValueError(f"{where}: pool {pool.name!r} sets `enable_lora: false`; remove it "
                                     "(fabriek enables LoRA on the engines that serve adapters)")

    def adapters_on(self, pool: str, model_id: str) -> dict[str, str]:
        """Adapter id -> source of the adapters an engine of ``model_id`` on ``pool`` serves:
        those of the tenants whose class may use the pool (no adapter reaches another domain)."""
        return {a.id: a.source for t in self.tenants
                if pool in (self.classes[t.tenant_class].pools if t.tenant_class in self.classes else ())
                for a in t.adapters if a.base == model_id}

    def ray_env(self) -> dict[str, str]:
        """Environment variables every Ray process of this platform needs: the Serve
        runtime's (``serve.ray_env``), and gRPC's message limit held to HTTP's body limit
        (Ray's default is 2 GiB, which a client could make a front door buffer)."""
        return {**self.serve.ray_env(), "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(self.http.max_request_bytes)}

    def tenancy(self) -> Tenancy:
        """The tenants and class policies as the policy core (``routers``) takes them."""
        return Tenancy(
            tenants={t.id: Tenant(t.id, t.tenant_class, frozenset(t.models),
                                  frozenset((a.id, a.base) for a in t.adapters)) for t in self.tenants},
            classes={c: ClassPolicy(frozenset(s.pools), s.priority, s.max_sequences_per_request, s.max_request_s,
                                         s.max_embedding_inputs_per_request, s.store_responses, s.responses_kept_s)
                     for c, s in self.classes.items()})

    def domains(self) -> tuple[IsolationDomain, ...]:
        """The isolation domains: classes joined by the pools they share (``routers``)."""
        return derive_domains({c: s.pools for c, s in self.classes.items()}, [p.name for p in self.pools])

    def unreachable_pools(self) -> list[str]:
        """Pools that no class uses: no front door reaches them, so they are not deployed."""
        used = {p for spec in self.classes.values() for p in spec.pools}
        return [p.name for p in self.pools if p.name not in used]

    def domain(self, name: str) -> IsolationDomain:
        """The domain called ``name``.

        Raises:
            ConfigError: no domain has this name.
        """
        for domain in self.domains():
            if domain.name == name:
                return domain
        raise ConfigError(f"no isolation domain {name!r}; this config has "
                          f"{[d.name for d in self.domains()]}")

    def domain_of(self, tenant_id: str) -> IsolationDomain:
        """The domain whose front door serves this tenant.

        Raises:
            ConfigError: no tenant has this id.
        """
        for tenant in self.tenants:
            if tenant.id == tenant_id:
                return next(d for d in self.domains() if tenant.tenant_class in d.classes)
        raise ConfigError(f"unknown tenant {tenant_id!r}; the config has {sorted(t.id for t in self.tenants)}")

    def model(self, model_id: str) -> ModelSpec:
        """The model spec with this public id.

        Raises:
            KeyError: no model has this id.
        """
        for model in self.models:
            if model.id == model_id:
                return model
        raise KeyError(model_id)


def load_config(source: str | Path | dict[str, Any] | None = None, *,
                check_library_settings: bool = True) -> PlatformConfig:
    """Load and validate a platform config from a YAML path, a dict, or the default.

    Args:
        source: a YAML file, an already parsed mapping, or None for the shipped config.
        check_library_settings: check engine arguments and deployment options against
            vLLM's and Ray's definitions, which imports both (seconds). Commands that read
            only tenants, domains and paths (``fabriek keys``, ``fabriek usage``) pass False;
            every rule of fabriek's own still applies.

    Raises:
        ConfigError: the file is missing or not YAML, or a field is invalid.
    """
    origin = "<inline>"
    if source is None:
        source = DEFAULT_CONFIG_PATH
    if not isinstance(source, dict):
        origin = str(source)
        try:
            source = yaml.safe_load(Path(source).read_text())
        except OSError as err:
            raise ConfigError(f"{origin}: cannot read config: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{origin}: not valid YAML: {err}") from None
        if not isinstance(source, dict):
            raise ConfigError(f"{origin}: expected a mapping at the top level")
    try:
        return PlatformConfig.model_validate(
            source, context={SKIP_LIBRARY_CHECKS: not check_library_settings})
    except ValidationError as err:
        raise ConfigError(f"{origin}: invalid platform config\n{_describe(err)}") from None


def with_overrides(config: PlatformConfig, *, http_port: int | None = None, grpc_port: int | None = None,
                   dashboard_port: int | None = None) -> PlatformConfig:
    """A copy of `config` with command-line overrides applied, validated again."""
    data = config.model_dump(by_alias=True)
    if http_port is not None:
        data["http"]["port"] = http_port
    if grpc_port is not None:
        data["grpc"]["port"] = grpc_port
    if dashboard_port is not None:
        data["local"]["dashboard_port"] = dashboard_port
    return load_config(data)


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem["loc"]).lstrip(".")
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {path or '(top level)'}: {message}")
    return "\n".join(lines)


def _no_duplicates(field: str, names: list[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field}: {name!r} appears twice")
        seen.add(name)

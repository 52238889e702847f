"""The platform config: one validated, frozen schema for models, pools and engines.

``fabriek serve``, the Ray Serve app builder, the tests and (later) the Helm chart all
read this schema; nothing else describes a deployment. Library settings pass through
and are checked against the library's own definitions: engine arguments against vLLM's
``AsyncEngineArgs`` fields, deployment options against Ray Serve's ``DeploymentSchema``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

DEFAULT_CONFIG_PATH = Path(__file__).parent / "configs" / "local-cpu.yaml"

# Schemes Ray's CloudMirrorConfig can mirror from; fabriek:// names a model that
# `fabriek models prepare` builds under FABRIEK_HOME.
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")
BUILTIN_SCHEME = "fabriek://"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


# Library settings that pass through, checked against the library's own definitions
# (the checks are defined at the bottom of this module).
EngineArgs = Annotated[dict[str, Any], AfterValidator(lambda v: _check_engine_args(v))]
DeploymentOptions = Annotated[dict[str, Any], AfterValidator(lambda v: _check_deployment_options(v))]


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
        if value.startswith(BUILTIN_SCHEME) or value.startswith(OBJECT_STORE_SCHEMES):
            return value
        if value.startswith(("/", "./", "../", "~")):
            return value
        raise ValueError(
            f"{value!r} is neither a local path nor an object-store URI; fabriek never "
            "downloads from a model hub. Use an absolute path, ./relative path, "
            f"{BUILTIN_SCHEME}NAME, or one of {', '.join(OBJECT_STORE_SCHEMES)}")



class PoolSpec(_Frozen):
    """A group of engine replicas on its own hardware, serving a set of models."""

    name: str = Field(description="Lowercase DNS-style name, e.g. `government`.")
    accelerator: Literal["cpu", "gpu"] = Field(description="Hardware of the pool's replicas.")
    models: list[str] = Field(min_length=1, description="Model ids (from `models`) this pool serves.")
    engine_args: EngineArgs = Field(default_factory=dict, description=(
        "vLLM engine arguments for this pool; they override the model's."))
    deployment: DeploymentOptions = Field(default_factory=lambda: {"num_replicas": 1}, description=(
        "Ray Serve deployment options per engine deployment (num_replicas, "
        "max_ongoing_requests, autoscaling_config, ray_actor_options, ...)."))

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} must be lowercase letters, digits and '-'")
        return value




class HttpSpec(_Frozen):
    """The OpenAI-compatible HTTP API."""

    host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the API.")
    max_request_bytes: int = Field(1 << 20, ge=1024, description=(
        "Largest request body accepted; larger ones get 413."))


class IngressSpec(_Frozen):
    """The ingress deployment that terminates HTTP and calls the engines."""

    deployment: DeploymentOptions = Field(
        default_factory=lambda: {"num_replicas": 1, "max_ongoing_requests": 1000,
                                 "ray_actor_options": {"num_cpus": 0.5}},
        description="Ray Serve deployment options of the ingress.")



class ServeRuntimeSpec(_Frozen):
    """Ray Serve's cluster-wide data-path settings (Ray reads them from the environment of
    every Ray process, so they are set before the cluster starts)."""

    proxy: Literal["haproxy", "ray"] = Field("haproxy", description=(
        "haproxy: Ray Serve's HAProxy front end with direct ingress, where HAProxy forwards "
        "HTTP straight to the ingress replicas' own servers (measured ~5 ms less per request "
        "than the Python proxy, see docs/benchmarks.md); ray: the classic Python proxy actor."))
    throughput_optimized: bool = Field(True, description=(
        "Ray Serve's throughput mode: user code on the replica's main event loop, buffered "
        "access logs, replica logs to files only (not stderr)."))
    drain_period_s: float = Field(30.0, ge=0, description=(
        "With the haproxy front end: how long a stopping ingress replica keeps serving so "
        "load balancers can move away; a single machine needs little."))
    haproxy_stats_port: int = Field(8404, ge=1, le=65535, description="HAProxy's stats page.")
    haproxy_metrics_port: int = Field(9101, ge=1, le=65535, description="HAProxy's Prometheus metrics.")

    def ray_env(self) -> dict[str, str]:
        """Environment variables that put these settings into effect for a Ray cluster."""
        haproxy = "1" if self.proxy == "haproxy" else "0"
        return {"RAY_SERVE_ENABLE_HA_PROXY": haproxy, "RAY_SERVE_ENABLE_DIRECT_INGRESS": haproxy,
                "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if self.throughput_optimized else "0",
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(self.drain_period_s),
                "RAY_SERVE_HAPROXY_STATS_PORT": str(self.haproxy_stats_port),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.haproxy_metrics_port)}


class LocalClusterSpec(_Frozen):
    """How `fabriek serve` starts its single-machine Ray head."""

    num_cpus: int | None = Field(8, ge=1, description=(
        "Logical CPUs declared to Ray; more than the cores is fine, since replicas "
        "reserve logical CPUs and the engine threads are scheduled by the OS."))
    dashboard_host: str = Field("127.0.0.1", description="Address of the Ray dashboard.")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Port of the Ray dashboard.")


class PlatformConfig(_Frozen):
    """A whole fabriek deployment."""

    models: list[ModelSpec] = Field(min_length=1)
    pools: list[PoolSpec] = Field(min_length=1)
    http: HttpSpec = Field(default_factory=HttpSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    serve: ServeRuntimeSpec = Field(default_factory=ServeRuntimeSpec)
    local: LocalClusterSpec = Field(default_factory=LocalClusterSpec)

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
        return self

    def model(self, model_id: str) -> ModelSpec:
        """The model spec with this public id.

        Raises:
            KeyError: no model has this id.
        """
        for model in self.models:
            if model.id == model_id:
                return model
        raise KeyError(model_id)


def load_config(source: str | Path | dict[str, Any] | None = None) -> PlatformConfig:
    """Load and validate a platform config from a YAML path, a dict, or the default.

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
        return PlatformConfig.model_validate(source)
    except ValidationError as err:
        raise ConfigError(f"{origin}: invalid platform config\n{_describe(err)}") from None


def with_overrides(config: PlatformConfig, *, http_port: int | None = None,
                   dashboard_port: int | None = None) -> PlatformConfig:
    """A copy of `config` with command-line overrides applied, validated again."""
    data = config.model_dump()
    if http_port is not None:
        data["http"]["port"] = http_port
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


@functools.cache
def _vllm_engine_arg_names() -> frozenset[str]:
    # Imported lazily: vLLM takes seconds to import and only engine configs need it.
    from vllm.engine.arg_utils import AsyncEngineArgs

    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


# Set by fabriek from `source` and the model id; a config must not set them.
_MANAGED_ENGINE_ARGS = frozenset({"model", "served_model_name", "tokenizer"})


def _check_engine_args(value: dict[str, Any]) -> dict[str, Any]:
    managed = sorted(set(value) & _MANAGED_ENGINE_ARGS)
    if managed:
        raise ValueError(f"{managed} are set by fabriek from the model's id and source; remove them")
    unknown = sorted(set(value) - _vllm_engine_arg_names())
    if unknown:
        raise ValueError(f"unknown vLLM engine argument(s) {unknown}; see `AsyncEngineArgs`")
    return value


def _check_deployment_options(value: dict[str, Any]) -> dict[str, Any]:
    # Ray's schema ignores unknown keys; a typo must not silently fall back to a default.
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema

    # `name` is fabriek's to choose (pool--model); placement groups are Ray Serve LLM's.
    managed = sorted(set(value) & {"name", "placement_group_bundles", "placement_group_strategy"})
    if managed:
        raise ValueError(f"{managed} are set by fabriek and Ray Serve LLM; remove them")
    actor_options = value.get("ray_actor_options") or {}
    if not isinstance(actor_options, dict):
        raise ValueError("ray_actor_options must be a mapping")
    unknown = sorted(set(value) - set(DeploymentSchema.model_fields))
    unknown += sorted(f"ray_actor_options.{k}" for k in
                      set(actor_options) - set(RayActorOptionsSchema.model_fields))
    if unknown:
        raise ValueError(f"unknown Ray Serve deployment option(s) {unknown}")
    try:
        DeploymentSchema(name="check", **value)
    except ValidationError as err:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ValueError(f"not valid Ray Serve deployment options: {problems}") from None
    return value

"""The Ray Serve application builder: platform config in, one Serve application per isolation
domain out.

Usable wherever Ray Serve takes an import path, for example a Serve config file, with one
application per domain (``fabriek config check`` lists the domains)::

    applications:
      - name: government
        route_prefix: /government
        import_path: serving.app:build_app
        args: {config_path: /etc/fabriek/platform.yaml, domain: government}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.deployment import Application

from routers import Route, TenantClass
from routers.power_budget import SHED_ORDER, PoolPowerSpec, PowerCap
from routers.quota import QuotaLimits
from serving.admission.admission_controller import AdmissionController
from serving.config import PlatformConfig, load_config
from serving.config.domains import FrontDoorPlacement, domain_config, front_door_placement
from serving.config.domains import route_prefix  # noqa: F401 (where Serve configs and tests import it from)
from serving.config.energy_specs import GOVERNOR_DEPLOYMENT
from serving.engine.engines import EngineDeployment, engine_args_for, engine_deployments, is_embedding_model
from serving.frontdoor.direct_server import FrontDoorLLMServer
from serving.frontdoor.front_door import FrontDoorSettings
from serving.frontdoor.ingress import OpenAIIngress
from serving.power.governor import PowerGovernor


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build one domain's fabriek Serve application from ``args``.

    Args:
        args: ``{"config_path": PATH}`` or ``{"config": {...}}`` (neither: the default local
            CPU config shipped with fabriek), and ``"domain": NAME``, which may be left out
            when the config has one domain only.

    Raises:
        ConfigError: the config is invalid, or names no such domain.
        ModelPrepareError: a built-in model is not prepared.
    """
    config, name = _config_and_domain(args, "build_app")
    return build_domain_app(config, name)


def build_power_app(args: dict[str, Any] | None = None) -> Application:
    """Build one domain's power governor application (``serving.power.governor``) from
    ``args`` (``config_path`` or ``config``, and ``domain``, as ``build_app``); Serve
    application ``fabriek-power`` in the domain's own cluster, no route prefix. It governs
    the domain's pools only, under its share of any platform cap."""
    config, name = _config_and_domain(args, "build_power_app")
    return bind_power_governor(domain_config(config, name))


def _config_and_domain(args: dict[str, Any] | None, builder: str) -> tuple[PlatformConfig, str]:
    """The config and the domain a builder's ``args`` name (``config`` or ``config_path``,
    and ``domain``, which may be left out when the config has one domain only)."""
    args = dict(args or {})
    unknown = set(args) - {"config", "config_path", "domain"}
    if unknown or ("config" in args and "config_path" in args):
        raise ValueError(f"{builder} takes `config` or `config_path`, and `domain`; got {sorted(args)}")
    config = load_config(args.get("config", args.get("config_path")))
    domains = [d.name for d in config.domains()]
    name = args.get("domain")
    if name is None:
        if len(domains) != 1:
            raise ValueError(f"{builder}: the config has the isolation domains {domains}; "
                             "pass `domain` (each domain is a Ray cluster and Serve application of its own)")
        name = domains[0]
    return config, name


def bind_power_governor(config: PlatformConfig) -> Application:
    """The power governor over every deployed pool, with the config's caps."""
    used = config.pools_in_scope("platform")
    pools = [PoolPowerSpec(p.name, pool_class(config, p.name), p.admission.max_running * len(p.models),
                           floor=p.power.floor * len(p.models), idle_watts=p.power.idle_watts)
             for p in config.pools if p.name in used]
    domains = {d.name: d.pools for d in config.domains()}
    scopes = {s: config.pools_in_scope(s) for s in ("platform", *(f"domain:{d}" for d in domains),
                                                    *(f"pool:{p}" for p in sorted(used)))}
    caps = [PowerCap(c.watts, config.pools_in_scope(c.scope), c.until_timestamp(), c.name) for c in config.power_caps]
    governor = serve.deployment(PowerGovernor, name=GOVERNOR_DEPLOYMENT, num_replicas=1,
                                ray_actor_options={"num_cpus": 0}, logging_config={"enable_access_log": False})
    return governor.bind(pools, domains, scopes, caps, interval_s=config.energy.sample_interval_s,
                         headroom=config.energy.headroom)


def pool_class(config: PlatformConfig, pool: str) -> TenantClass:
    """The most protected class a pool serves (government over research over commercial):
    a power cap cuts the pool as late as that class asks."""
    classes = [c for c, spec in config.classes.items() if pool in spec.pools]
    return max(classes, key=SHED_ORDER.index)


def build_domain_app(config: PlatformConfig, domain: str) -> Application:
    """Bind one domain's front door (HTTP and gRPC, admission controller, ledger writer) and
    its engine deployments, one per pool and model of that domain.

    Everything bound here comes from the domain's own cut of the config
    (``serving.config.domains.domain_config``): other domains' tenants, key files, salt
    secrets and pools are not in it. Each (pool, model) is its own deployment, named
    ``<pool>--...``, and the front door admits a tenant's requests only to pools of its class.

    Where the domain serves one chat model in one pool and ``serve.token_path`` is
    ``direct``, that engine deployment is itself the front door (``FrontDoorLLMServer``): no
    Python process relays its streams; it reaches the domain's embedding engines, whose
    answers are whole responses, over handles. Otherwise an ``OpenAIIngress`` relays to the
    engines.
    """
    config = domain_config(config, domain)
    placement = front_door_placement(config, config.domain(domain))
    admission_controller = bind_admission_controller(config, placement)
    engines = engine_deployments(config)
    settings = front_door_settings(config, domain, engines)
    if uses_direct_token_path(config):
        [engine] = [e for e in engines if not e.is_embedding]
        others = {Route(e.pool, e.model_id): e.bind() for e in engines if e.is_embedding}
        return engine.bind(FrontDoorLLMServer, pool=engine.pool, admission_controller=admission_controller,
                           front_door=settings, cpu_nice=placement.cpu_nice, other_engines=others)
    ingress = serve.deployment(OpenAIIngress, name="OpenAIIngress",
                               **_on_domain_nodes(config.ingress.deployment, placement.ray_resources))
    return ingress.bind({Route(e.pool, e.model_id): e.bind() for e in engines},
                        admission_controller=admission_controller, settings=settings,
                        cores=placement.cores, cpu_nice=placement.cpu_nice)


def uses_direct_token_path(config: PlatformConfig) -> bool:
    """Whether a domain's cut of the config gets the direct layout: ``serve.token_path`` is
    ``direct`` and the domain serves exactly one (pool, model) route of a chat model (its
    embedding models may be beside it)."""
    routes = sum(1 for p in config.pools for m in p.models if not is_embedding_model(engine_args_for(p, config.model(m))))
    return config.serve.token_path == "direct" and routes == 1


def front_door_settings(config: PlatformConfig, domain: str, engines: list[EngineDeployment]) -> FrontDoorSettings:
    """The front door of ``domain`` (its cut of the config) in front of ``engines``."""
    cards = {e.model_id: {"max_model_len": e.engine_args.get("max_model_len")} for e in engines}
    embedding_models = frozenset(e.model_id for e in engines if e.is_embedding)
    # Token counting (gRPC CountTokens) needs the tokenizer on the front door's node: local
    # model directories have it; object-store models are only mirrored onto engine nodes.
    tokenizers = {e.model_id: str(Path(e.model_source) / "tokenizer.json") for e in engines
                  if isinstance(e.model_source, str) and (Path(e.model_source) / "tokenizer.json").is_file()}
    auth = config.auth
    return FrontDoorSettings(model_cards=cards, max_request_bytes=config.http.max_request_bytes, domain=domain,
                             tenancy=config.tenancy(), key_file=auth.resolved_key_file(domain),
                             cache_salt_secret_file=auth.resolved_cache_salt_secret_file(domain),
                             key_reload_interval_s=auth.key_reload_interval_s, ledger=config.ledger,
                             tokenizer_files=tokenizers, quotas=quotas_of(config), embedding_models=embedding_models)


def bind_admission_controller(config: PlatformConfig, placement: FrontDoorPlacement) -> Application:
    """The one replica that holds one domain's quotas and pool queues for its ingress replicas.

    It only keeps counters (no CPU reservation); a single replica is what makes quotas and
    fairness exact across ingress replicas (see ``serving.admission.admission_controller``).

    Args:
        config: the domain's cut of the platform config.
        placement: where the domain's front door runs.
    """
    tenancy = config.tenancy()
    route_limits = {Route(p.name, m): p.admission.to_limits() for p in config.pools for m in p.models}
    # Each route's fair shares count only the tenants that may use it.
    route_weights = {r: {t.id: t.weight for t in config.tenants
                         if tenancy.may_use(tenancy.tenants[t.id], r.pool, r.model_id)}
                     for r in route_limits}
    # No access log: it would write two lines (acquire, release) per request on the hot
    # path, for what the ingress's own access line already says.
    controller = serve.deployment(
        AdmissionController, name="AdmissionController",
        **_on_domain_nodes({"num_replicas": 1, "max_ongoing_requests": 100_000,
                            "ray_actor_options": {"num_cpus": 0}}, placement.ray_resources),
        logging_config={"enable_access_log": False})
    return controller.bind(quotas_of(config), route_limits, route_weights, cores=placement.cores,
                           cpu_nice=placement.cpu_nice)


def _on_domain_nodes(options: dict[str, Any], resources: dict[str, float]) -> dict[str, Any]:
    """Deployment options that ask, besides their own, for the domain's node resource."""
    actor = dict(options.get("ray_actor_options") or {})
    actor["resources"] = {**(actor.get("resources") or {}), **resources}
    return {**options, "ray_actor_options": actor}


def quotas_of(config: PlatformConfig) -> dict[str, QuotaLimits]:
    """Tenant id -> quota, as both the controller and the ingress take them."""
    return {t.id: t.quota.to_limits() for t in config.tenants}

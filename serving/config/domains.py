"""One isolation domain's share of the platform config, and where its front door runs.

Each domain's Serve application is built from ``domain_config(config, name)``: the config
cut down to the domain's pools, classes, tenants and models, with its own key file, salt
secret and ledger resolved. Whatever the app builder hands to the domain's processes
therefore comes from this cut, so a commercial process is never given a government tenant,
key hash, salt or ledger URL, not even by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

from routers import IsolationDomain
from routers.power_budget import SHED_ORDER
from routers.power_shares import DomainPowerDemand, split_cap
from serving.config.home import DOMAIN_PLACEHOLDER
from serving.config.cpu_lists import cores_of
from serving.config.schema import PlatformConfig, load_config

# Share of a node's domain resource one front-door replica takes: a node advertising
# `domain_<name>: 1` hosts up to 1000 of that domain's front-door replicas, and none of another's.
DOMAIN_RESOURCE_PER_REPLICA = 0.001
# The niceness Ray starts its workers at. Ray sets it on the worker's main thread after some
# of its threads exist, which keep 0: a front door takes it on every thread explicitly.
RAY_WORKER_NICENESS = 15


def route_prefix(domain: str) -> str:
    """Where a domain's front door listens: ``/<domain>`` (its OpenAI base URL is ``/<domain>/v1``)."""
    return f"/{domain}"


def domain_resource(name: str) -> str:
    """The Ray custom resource that nodes of a domain advertise, e.g. ``domain_government``."""
    return f"domain_{name}"


def domain_config(config: PlatformConfig, name: str) -> PlatformConfig:
    """The part of ``config`` that domain ``name``'s processes may know.

    Raises:
        ConfigError: no domain has this name.
    """
    domain = config.domain(name)
    pools = [p for p in config.pools if p.name in domain.pools]
    served = {m for p in pools for m in p.models}
    data = config.model_dump(by_alias=True, exclude_none=True)
    data["pools"] = [p.model_dump(by_alias=True, exclude_none=True) for p in pools]
    data["models"] = [m.model_dump(by_alias=True, exclude_none=True) for m in config.models if m.id in served]
    data["classes"] = {str(c): s.model_dump() for c, s in config.classes.items() if c in domain.classes}
    data["tenants"] = [t.model_dump(by_alias=True, exclude_none=True) for t in config.tenants
                       if t.tenant_class in domain.classes]
    auth = config.auth
    data["auth"] = {"key_file": str(auth.resolved_key_file(name)),
                    "cache_salt_secret_file": str(auth.resolved_cache_salt_secret_file(name)),
                    "key_reload_interval_s": auth.key_reload_interval_s}
    if config.ledger.url is not None:
        data["ledger"]["url"] = config.ledger.url.replace(DOMAIN_PLACEHOLDER, name)
    # Each domain's power governor keeps the caps over its own pools, and its share of each
    # platform cap (routers.power_shares); a cap over another domain is not its business.
    shares = platform_cap_shares(config)
    data["power_caps"] = [
        {**cap.model_dump(exclude_none=True), "scope": f"domain:{name}", "watts": shares[cap.name][name]}
        if cap.scope == "platform" else cap.model_dump(exclude_none=True)
        for cap in config.power_caps
        if cap.scope == "platform" or config.pools_in_scope(cap.scope) <= set(domain.pools)]
    return load_config(data)


def platform_cap_shares(config: PlatformConfig,
                        drawn_watts: dict[str, float | None] | None = None) -> dict[str, dict[str, float]]:
    """Platform cap name -> domain -> its share of the cap's watts, given what each domain
    draws now (None or absent: not measured, as at start-up)."""
    return {cap.name: platform_share(config, cap.watts, drawn_watts)
            for cap in config.power_caps if cap.scope == "platform"}


def platform_share(config: PlatformConfig, watts: float,
                   drawn_watts: dict[str, float | None] | None = None) -> dict[str, float]:
    """Domain -> its share of a platform cap of ``watts`` (routers.power_shares), given what
    each domain draws now (None or absent: not measured)."""
    demands = [domain_power_demand(config, d.name, (drawn_watts or {}).get(d.name)) for d in config.domains()]
    return split_cap(watts, demands, headroom=config.energy.headroom)


def domain_power_demand(config: PlatformConfig, name: str, drawn_watts: float | None) -> DomainPowerDemand:
    """Domain ``name`` as the split of a platform cap sees it: its most protected class,
    and its pools' idle draw as its floor."""
    domain = config.domain(name)
    pools = [p for p in config.pools if p.name in domain.pools]
    floor = sum(p.power.idle_watts * len(p.models) for p in pools)
    return DomainPowerDemand(name, max(domain.classes, key=SHED_ORDER.index), floor, drawn_watts)


@dataclass(frozen=True)
class FrontDoorPlacement:
    """Where a domain's front door (ingress replicas, admission controller) runs.

    Args:
        ray_resources: Ray resources each replica asks for; only the domain's nodes have them.
        cores: on a CPU machine, the cores of the domain's pools (None: not pinned).
        cpu_nice: the niceness every thread takes.
    """

    ray_resources: dict[str, float]
    cores: frozenset[int] | None
    cpu_nice: int | None


def front_door_placement(config: PlatformConfig, domain: IsolationDomain) -> FrontDoorPlacement:
    """The front door shares its domain's hardware and nothing else: its pools' nodes, and on
    one CPU machine its pools' cores at its pools' niceness (``ingress.cpu_nice`` overrides)."""
    pools = [p for p in config.pools if p.name in domain.pools]
    # Pinned only where every pool names its cores (a GPU pool, or `auto`, names none).
    bound = [cores_of(p.cpu_threads_bind) if p.cpu_threads_bind else None for p in pools]
    cores = frozenset().union(*bound) if bound and all(bound) else None
    nices = [p.cpu_nice for p in pools if p.cpu_nice is not None]
    cpu_nice = config.ingress.cpu_nice if config.ingress.cpu_nice is not None else \
        min(nices, default=RAY_WORKER_NICENESS)
    return FrontDoorPlacement({domain_resource(domain.name): DOMAIN_RESOURCE_PER_REPLICA}, cores, cpu_nice)

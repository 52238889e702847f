"""Isolation domains: the tenant classes that share pools, and nothing else.

A domain is a set of pools together with the classes that use them; two classes that share
a pool share a domain (the relation is closed transitively: if government shares a pool with
research and research one with commercial, all three are one domain). Each domain gets a
front door of its own (ingress, admission controller, ledger writer, key hashes, cache-salt
secret), so no process that handles one domain's requests ever handles another's. The
pairing that the facility promises never to make is government with commercial: a domain
holding both is allowed (a config may choose it) but always warned about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from routers.tenants import TenantClass

# Classes that must never meet in one domain; `config check` warns when they do.
MUST_NOT_SHARE = frozenset({TenantClass.GOVERNMENT, TenantClass.COMMERCIAL})


@dataclass(frozen=True)
class IsolationDomain:
    """One front door's worth of the platform.

    Args:
        name: DNS-style name, the class's name for a one-class domain, else the classes'
            names sorted and joined with '-' (``commercial-research``); it names the route
            prefix, the Ray resource, the Kubernetes objects and the secret files.
        classes: the tenant classes whose requests enter here, and only here.
        pools: the pools of these classes, in config order.
    """

    name: str
    classes: frozenset[TenantClass]
    pools: tuple[str, ...]

    @property
    def is_mixing_government_and_commercial(self) -> bool:
        """Whether government and commercial requests would meet in this domain's processes."""
        return MUST_NOT_SHARE <= self.classes


def derive_domains(class_pools: Mapping[TenantClass, Iterable[str]],
                   pool_order: Sequence[str]) -> tuple[IsolationDomain, ...]:
    """The domains of a config: classes joined by the pools they share.

    Args:
        class_pools: class -> the pools it may use.
        pool_order: every pool, in config order (domains follow the order of their first pool).

    Returns:
        The domains, each class in exactly one; pools no class uses are in none.
    """
    # Union-find over classes, joined through each pool's first user.
    parent: dict[TenantClass, TenantClass] = {c: c for c in class_pools}

    def root(c: TenantClass) -> TenantClass:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    first_user: dict[str, TenantClass] = {}
    for tenant_class, pools in class_pools.items():
        for pool in pools:
            if pool in first_user:
                parent[root(tenant_class)] = root(first_user[pool])
            else:
                first_user[pool] = tenant_class
    members: dict[TenantClass, set[TenantClass]] = {}
    for tenant_class in class_pools:
        members.setdefault(root(tenant_class), set()).add(tenant_class)
    domains = []
    for group in members.values():
        pools = tuple(p for p in pool_order if any(p in class_pools[c] for c in group))
        name = "-".join(sorted(str(c) for c in group))
        domains.append(IsolationDomain(name, frozenset(group), pools))
    order = {p: i for i, p in enumerate(pool_order)}
    return tuple(sorted(domains, key=lambda d: min((order.get(p, len(order)) for p in d.pools),
                                                   default=len(order))))

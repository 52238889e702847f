"""A facility-wide power cap, split into one share per isolation domain.

Each domain runs in a Ray cluster of its own, with a power governor of its own that sees
only its own pools; no process sees every domain's pools any more. A cap over the whole
platform (a grid connection's limit) therefore becomes one cap per domain, whose watts add
up to the platform's. An operator-side coordinator sets the shares (``fabriek power cap
--scope platform``) from what each domain draws; each governor keeps its last share when
the coordinator is gone, so a domain never runs uncapped and never waits on another.

The split, in order:

1. every domain gets its floor (what its pools draw idle), scaled down together if even the
   floors do not fit;
2. then, most protected class first (government, research, commercial: the reverse of
   ``SHED_ORDER``), each domain gets what it draws now plus ``headroom``, while watts last;
3. what is still left is shared equally, so every domain has room to grow until the next
   split. With nothing measured yet (at start-up), that is all of step 3.

Pure: the caller measures, and sets the shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from routers.power_budget import SHED_ORDER
from routers.tenants import TenantClass


@dataclass(frozen=True)
class DomainPowerDemand:
    """A domain as the split sees it.

    Args:
        domain: its name.
        tenant_class: its most protected class (it gives up power in that class's turn).
        floor_watts: what its pools draw with nothing running (0 if unknown).
        drawn_watts: what it drew over the last interval; None: not measured.
    """

    domain: str
    tenant_class: TenantClass
    floor_watts: float = 0.0
    drawn_watts: float | None = None


def split_cap(watts: float, domains: Sequence[DomainPowerDemand], *, headroom: float = 0.05) -> dict[str, float]:
    """Each domain's share of a cap of ``watts``; the shares add up to ``watts``.

    Raises:
        ValueError: ``watts`` is not positive, no domain is given, or one appears twice.
    """
    if not watts > 0:
        raise ValueError(f"a power cap must be positive, got {watts}")
    names = [d.domain for d in domains]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"split_cap needs distinct domains, got {names}")
    floors = {d.domain: max(d.floor_watts, 0.0) for d in domains}
    total_floor = sum(floors.values())
    if total_floor >= watts:
        return {name: watts * floor / total_floor for name, floor in floors.items()}
    shares = dict(floors)
    left = watts - total_floor
    rank = {c: i for i, c in enumerate(SHED_ORDER[::-1])}
    for demand in sorted(domains, key=lambda d: (rank[d.tenant_class], d.domain)):
        if demand.drawn_watts is None:
            continue
        need = max(0.0, demand.drawn_watts * (1 + headroom) - shares[demand.domain])
        given = min(need, left)
        shares[demand.domain] += given
        left -= given
    for name in shares:
        shares[name] += left / len(shares)
    return shares

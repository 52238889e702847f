"""Keeping measured power under a cap: which pools run fewer requests, and how many.

A grid operator's curtailment request becomes a power cap in watts over a scope: one pool,
one isolation domain's pools, or the whole platform, optionally until a clock time. Every
interval the meter says what each pool drew (NVML or RAPL counter deltas over the
interval, never an estimate) and how many requests it ran on average. From that:

- over the cap, pools' running limits come down: **commercial pools first, research next,
  government last**, each never below its floor. Within a class, the pool that draws most
  per running request gives first: it frees the most watts per request it refuses;
- under the cap by more than a margin (``headroom``), limits go back up in the opposite
  order (government first), to at most each pool's configured limit;
- with several caps in force, each pool gets the lowest limit any of them asks.

How many watts a running request costs is learned per pool from the meter (what the pool
drew above its idle draw, over the requests it ran: a moving average, so one noisy interval
does not swing the limits). A pool whose cost is not known yet gives all it may when a cap
binds, and gets its configured limit back when none does.

Pure and synchronous: the caller owns the meter, the clock and applying the limits
(``serving`` feeds it the engine replicas' samples and sets the admission controller's
``max_running``).
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from routers.tenants import TenantClass

# Who gives up power first when a cap binds, and takes it back last.
SHED_ORDER = (TenantClass.COMMERCIAL, TenantClass.RESEARCH, TenantClass.GOVERNMENT)
# Weight of the newest interval in the learned watts per running request.
COST_SMOOTHING = 0.3


@dataclass(frozen=True)
class PoolPowerSpec:
    """A pool as the power budget sees it.

    Args:
        pool: its name.
        tenant_class: the class whose requests it serves (a pool serves one domain's classes;
            the most protected one counts: government over research over commercial).
        max_running: its configured running limit (``admission.max_running``).
        floor: the fewest running requests a cap may leave it (at least 1).
        idle_watts: what it draws with nothing running (measured once; 0 if unknown).
    """

    pool: str
    tenant_class: TenantClass
    max_running: int
    floor: int = 1
    idle_watts: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.floor <= self.max_running:
            raise ValueError(f"pool {self.pool}: floor {self.floor} must be between 1 and "
                             f"max_running {self.max_running}")


@dataclass(frozen=True)
class PowerCap:
    """A cap over some pools.

    Args:
        watts: the most the scope's pools may draw together.
        pools: the scope: one pool, a domain's pools, or every pool.
        until: clock time (the caller's clock) after which it no longer holds; None: until lifted.
        name: what metrics and the ledger call it (``platform``, ``domain:government``, ...).
    """

    watts: float
    pools: frozenset[str]
    until: float | None = None
    name: str = "platform"

    def __post_init__(self) -> None:
        if not self.watts > 0 or math.isinf(self.watts):
            raise ValueError(f"power cap {self.name}: {self.watts} W is not a positive, finite number")
        if not self.pools:
            raise ValueError(f"power cap {self.name}: covers no pool")

    def holds_at(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True)
class PoolSample:
    """What the meter saw of one pool over one interval.

    Args:
        watts: mean power over the interval (energy delta over its length), or None where
            the pool's hardware has no counter.
        running: mean number of requests running over the interval.
    """

    watts: float | None
    running: float


@dataclass(frozen=True)
class PowerDecision:
    """The limits for the next interval and why.

    Args:
        limits: pool -> running limit.
        binding: names of the caps the scope's measured power exceeded this interval.
        unmetered: pools under a cap that have no counter: their limits are left as they
            were (a cap cannot be kept on what is not measured; the caller reports it).
    """

    limits: dict[str, int]
    binding: tuple[str, ...]
    unmetered: tuple[str, ...]


class PowerBudget:
    """Running limits that keep each cap's measured power under it.

    Args:
        pools: every pool the platform runs.
        headroom: the fraction of a cap kept free before limits go back up (a limit raised
            just under the cap would be cut again at the next sample).
    """

    def __init__(self, pools: Iterable[PoolPowerSpec], *, headroom: float = 0.05):
        self._pools = {p.pool: p for p in pools}
        if not 0 <= headroom < 1:
            raise ValueError(f"headroom must be in [0, 1), not {headroom}")
        self._headroom = headroom
        self._limits = {name: p.max_running for name, p in self._pools.items()}
        self._cost: dict[str, float] = {}  # pool -> learned watts per running request

    @property
    def limits(self) -> dict[str, int]:
        return dict(self._limits)

    def watts_per_request(self, pool: str) -> float | None:
        """The learned cost of one running request of ``pool``, if it has run any."""
        return self._cost.get(pool)

    def update(self, samples: Mapping[str, PoolSample], caps: Iterable[PowerCap], now: float) -> PowerDecision:
        """Learn from one interval's samples and set the limits for the next one.

        Raises:
            KeyError: a cap or a sample names a pool the budget does not know.
        """
        for name, sample in samples.items():
            self._learn(self._pools[name], sample)
        active = [c for c in caps if c.holds_at(now)]
        wanted = {name: p.max_running for name, p in self._pools.items()}
        binding, unmetered = [], set()
        for cap in active:
            unknown = cap.pools - self._pools.keys()
            if unknown:
                raise KeyError(f"power cap {cap.name} names unknown pools {sorted(unknown)}")
            missing = {p for p in cap.pools if samples.get(p) is None or samples[p].watts is None}
            if missing:
                unmetered |= missing
                for pool in missing:
                    wanted[pool] = min(wanted[pool], self._limits[pool])
            drawn = sum(samples[p].watts for p in cap.pools - missing)
            limits = self._fit(cap, drawn, samples, skip=missing)
            if drawn > cap.watts:
                binding.append(cap.name)
            for pool, limit in limits.items():
                wanted[pool] = min(wanted[pool], limit)
        self._limits = wanted
        return PowerDecision(dict(wanted), tuple(binding), tuple(sorted(unmetered)))

    def _learn(self, spec: PoolPowerSpec, sample: PoolSample) -> None:
        if sample.watts is None or sample.running < 0.5:
            return  # nothing ran long enough to tell what a request costs
        cost = max(0.0, sample.watts - spec.idle_watts) / sample.running
        before = self._cost.get(spec.pool)
        self._cost[spec.pool] = cost if before is None else (1 - COST_SMOOTHING) * before + COST_SMOOTHING * cost

    def _fit(self, cap: PowerCap, drawn: float, samples: Mapping[str, PoolSample],
             skip: set[str]) -> dict[str, int]:
        """The scope's limits after this interval: cut to shed the excess, or raised into the
        spare power, in ``SHED_ORDER``."""
        pools = [self._pools[p] for p in cap.pools if p not in skip]
        limits = {p.pool: self._limits[p.pool] for p in pools}
        cost = {p.pool: self._cost.get(p.pool) for p in pools}
        if drawn > cap.watts:
            excess = drawn - cap.watts
            for pool in self._in_order(pools, SHED_ORDER, cost, costliest_first=True):
                if excess <= 0:
                    break
                # What it runs now bounds the cut: a limit above that frees nothing.
                running = min(limits[pool.pool], math.ceil(samples[pool.pool].running))
                per_request = cost[pool.pool]
                if per_request is None or per_request <= 0:
                    cut = running - pool.floor  # no cost known: all it may give
                else:
                    cut = min(running - pool.floor, math.ceil(excess / per_request))
                cut = max(cut, 0)
                limits[pool.pool] = max(pool.floor, running - cut)
                excess -= cut * (per_request or 0.0)
        else:
            spare = cap.watts * (1 - self._headroom) - drawn
            for pool in self._in_order(pools, SHED_ORDER[::-1], cost, costliest_first=False):
                per_request = cost[pool.pool]
                room = pool.max_running - limits[pool.pool]
                if room <= 0 or spare <= 0:
                    continue
                if per_request is None or per_request <= 0:
                    raise_by = room  # no request of the scope has measurably cost anything yet
                else:
                    raise_by = min(room, math.floor(spare / per_request))
                limits[pool.pool] += raise_by
                spare -= raise_by * (per_request or 0.0)
        return limits

    @staticmethod
    def _in_order(pools: list[PoolPowerSpec], classes: tuple[TenantClass, ...], cost: Mapping[str, float | None],
                  costliest_first: bool) -> list[PoolPowerSpec]:
        rank = {c: i for i, c in enumerate(classes)}
        sign = -1 if costliest_first else 1
        return sorted(pools, key=lambda p: (rank[p.tenant_class], sign * (cost[p.pool] or 0.0), p.pool))


_POWER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(W|kW|MW)\s*$", re.IGNORECASE)
_SCALE = {"w": 1.0, "kw": 1e3, "mw": 1e6}


def parse_watts(text: str) -> float:
    """``"2.5kW"`` -> 2500.0; units W, kW, MW (any case).

    Raises:
        ValueError: not a positive power with a unit.
    """
    match = _POWER.match(text)
    if not match:
        raise ValueError(f"not a power: {text!r} (write e.g. 800W, 2.5kW or 1.2MW)")
    watts = float(match.group(1)) * _SCALE[match.group(2).lower()]
    if watts <= 0:
        raise ValueError(f"a power cap must be above 0, not {text!r}")
    return watts


_CLOCK = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


def parse_until(text: str, now: datetime.datetime) -> datetime.datetime:
    """When a cap ends: ``19:00`` (the next 19:00 after ``now``, in ``now``'s zone) or an ISO
    8601 time (``2026-12-02T19:00``, in ``now``'s zone when it names none).

    Raises:
        ValueError: neither form, or a time not after ``now``.
    """
    match = _CLOCK.match(text)
    if match:
        until = now.replace(hour=int(match.group(1)), minute=int(match.group(2)), second=0, microsecond=0)
        return until if until > now else until + datetime.timedelta(days=1)
    try:
        until = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (write e.g. 19:00 or 2026-12-02T19:00)") from None
    if until.tzinfo is None:
        until = until.replace(tzinfo=now.tzinfo)
    if until <= now:
        raise ValueError(f"{text!r} is not in the future")
    return until

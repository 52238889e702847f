"""The power governor: one replica that keeps measured power under the operator's caps.

Engine replicas report what their meters counted every few seconds
(``serving.engine.energy_sampler``); the governor sums them per pool, asks the policy
core (``routers.power_budget``) for running limits, and hands each isolation domain's
admission controller the limits of its own pools (fire and forget). A cap comes from the
config (``power_caps``) or from ``fabriek power cap`` at run time.

It sits outside every isolation domain, as the Serve controller does: it reads pools'
watts and request counts and sets pools' limits, and never sees a request, a tenant or a
key. A cap added at run time lives in this replica: if it restarts, the config's caps
hold again and runtime caps must be set again (``fabriek power status`` shows which hold).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from ray import serve
from ray.util.metrics import Gauge

from routers.power_budget import PoolPowerSpec, PoolSample, PowerBudget, PowerCap
from serving.config.energy_specs import check_cap_name

logger = logging.getLogger("fabriek.power")

# A replica's report older than this many intervals no longer counts (the replica is gone).
STALE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class _Report:
    at: float
    joules: float | None
    seconds: float
    running: int


class PowerGovernor:
    """Power caps over the platform's pools.

    Args:
        pools: every deployed pool, as the power budget sees it.
        domains: isolation domain -> its pools (each domain's admission controller gets its own).
        scopes: scope name (``platform``, ``domain:NAME``, ``pool:NAME``) -> its pools.
        caps: the config's caps.
        interval_s: how often limits are set (the engines' sample interval).
        headroom: see ``PowerBudget``.
        controller_of: domain -> a handle to its ``AdmissionController`` (tests pass their own).
    """

    async def __init__(self, pools: list[PoolPowerSpec], domains: Mapping[str, tuple[str, ...]],
                       scopes: Mapping[str, frozenset[str]], caps: list[PowerCap], *, interval_s: float = 1.0,
                       headroom: float = 0.05, controller_of: Callable[[str], object] | None = None,
                       clock: Callable[[], float] = time.time):
        self._pools = {p.pool: p for p in pools}
        self._budget = PowerBudget(pools, headroom=headroom)
        self._domains = {d: tuple(p) for d, p in domains.items()}
        self._scopes = {s: frozenset(p) for s, p in scopes.items()}
        self._caps = {c.name: c for c in caps}
        self._from_config = frozenset(self._caps)
        self._interval_s = interval_s
        self._clock = clock
        self._controller_of = controller_of or _admission_controller
        self._controllers: dict[str, object] = {}
        self._reports: dict[str, dict[str, _Report]] = {p: {} for p in self._pools}
        self._last: dict[str, PoolSample] = {}
        self._binding: tuple[str, ...] = ()
        self._unmetered: tuple[str, ...] = ()
        self._watts = Gauge("fabriek_power_watts", "Measured power of each pool (its engines' counters).",
                            tag_keys=("pool",))
        self._cap_watts = Gauge("fabriek_power_cap_watts", "Power caps in force.", tag_keys=("cap",))
        self._cap_binding = Gauge("fabriek_power_cap_binding",
                                  "1 while a cap's scope draws more than the cap.", tag_keys=("cap",))
        self._limit = Gauge("fabriek_power_running_limit",
                            "Requests each pool may run under the power caps (its configured limit when none binds).",
                            tag_keys=("pool",))
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def report(self, pool: str, replica_id: str, joules: float | None, seconds: float, running: int) -> None:
        """One engine replica's interval (``serving.engine.energy_sampler``)."""
        if pool in self._reports and seconds > 0:
            self._reports[pool][replica_id] = _Report(time.monotonic(), joules, seconds, running)

    async def set_cap(self, name: str, watts: float, scope: str = "platform", until: float | None = None) -> dict:
        """Add or replace a cap; returns it as ``status`` shows it.

        Raises:
            ValueError: an unknown scope, or watts that are not a positive number.
        """
        check_cap_name(name)
        if scope not in self._scopes:
            raise ValueError(f"unknown scope {scope!r}; known: {', '.join(sorted(self._scopes))}")
        if until is not None and until <= self._clock():
            raise ValueError("the cap's end is in the past")
        self._caps[name] = PowerCap(float(watts), self._scopes[scope], until, name)
        logger.info("power cap %s: %.0f W over %s%s", name, watts, scope,
                    "" if until is None else f" until {time.strftime('%Y-%m-%d %H:%M', time.localtime(until))}")
        await self._step()  # act now, not at the next interval
        return self._describe(self._caps[name])

    async def lift(self, name: str) -> bool:
        """Lift a cap; False if there is none of that name."""
        if self._caps.pop(name, None) is None:
            return False
        self._cap_watts.set(0, {"cap": name})
        self._cap_binding.set(0, {"cap": name})
        logger.info("power cap %s lifted", name)
        await self._step()
        return True

    async def status(self) -> dict:
        """Caps, and per pool: measured watts, running requests, the limit in force."""
        limits = self._budget.limits
        return {
            "caps": [self._describe(c) for c in self._caps.values()],
            "pools": {name: {"watts": self._last[name].watts if name in self._last else None,
                             "running": self._last[name].running if name in self._last else None,
                             "limit": limits[name], "max_running": spec.max_running, "floor": spec.floor,
                             "tenant_class": str(spec.tenant_class),
                             "watts_per_request": self._budget.watts_per_request(name)}
                      for name, spec in self._pools.items()},
            "unmetered": list(self._unmetered),
        }

    def _describe(self, cap: PowerCap) -> dict:
        return {"name": cap.name, "watts": cap.watts, "pools": sorted(cap.pools), "until": cap.until,
                "binding": cap.name in self._binding, "from_config": cap.name in self._from_config}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._step()
            except Exception:
                logger.exception("power governor: a step failed")

    async def _step(self) -> None:
        now = self._clock()
        for name in [n for n, c in self._caps.items() if not c.holds_at(now)]:
            logger.info("power cap %s ended", name)
            self._caps.pop(name)
            self._cap_watts.set(0, {"cap": name})
            self._cap_binding.set(0, {"cap": name})
        samples = self._samples()
        decision = self._budget.update(samples, self._caps.values(), now)
        self._last.update(samples)
        if decision.unmetered and decision.unmetered != self._unmetered:
            logger.warning("power caps cannot be kept on pools without an energy counter: %s",
                           ", ".join(decision.unmetered))
        self._binding, self._unmetered = decision.binding, decision.unmetered
        for name, sample in samples.items():
            if sample.watts is not None:
                self._watts.set(sample.watts, {"pool": name})
        for name, limit in decision.limits.items():
            self._limit.set(limit, {"pool": name})
        for cap in self._caps.values():
            self._cap_watts.set(cap.watts, {"cap": cap.name})
            self._cap_binding.set(1 if cap.name in decision.binding else 0, {"cap": cap.name})
        caps = tuple(sorted(self._caps))
        for domain, pools in self._domains.items():
            limits = {p: decision.limits[p] for p in pools if p in decision.limits}
            try:
                controller = self._controllers.get(domain) or self._controllers.setdefault(
                    domain, self._controller_of(domain))
                controller.set_power_limits.remote(limits, caps)
            except Exception as err:
                self._controllers.pop(domain, None)
                logger.warning("power governor: domain %s unreachable (%s)", domain, type(err).__name__)

    def _samples(self) -> dict[str, PoolSample]:
        """Each pool's mean power and running requests over the latest reports of its replicas."""
        fresh_after = time.monotonic() - STALE_AFTER_INTERVALS * self._interval_s
        samples = {}
        for pool, reports in self._reports.items():
            for replica in [r for r, rep in reports.items() if rep.at < fresh_after]:
                del reports[replica]
            if not reports:
                continue
            metered = all(r.joules is not None for r in reports.values())
            watts = sum(r.joules / r.seconds for r in reports.values()) if metered else None
            samples[pool] = PoolSample(watts, float(sum(r.running for r in reports.values())))
        return samples


def _admission_controller(domain: str):
    # Each domain is a Serve application named after it (serving.launcher, the chart).
    return serve.get_deployment_handle("AdmissionController", app_name=domain)

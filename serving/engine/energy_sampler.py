"""The engine replica's energy loop: close a meter interval every few seconds, count it, report it.

Every ``energy.sample_interval_s`` the replica's ``EnergyAccountant`` closes an interval
(requests that finish close their own last one, see ``finish``). Each interval goes to:

- Prometheus: ``fabriek_engine_energy_joules`` (all the meter counted for this engine) and
  ``fabriek_engine_idle_energy_joules`` (the part no request carried), by pool;
- the platform's power governor (``serving.power``), fire and forget: the pool's power and
  how many requests ran, from which it sets the pools' running limits under a cap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ray.util.metrics import Counter

from serving.engine.energy_accountant import EnergyAccountant, Interval

logger = logging.getLogger("fabriek.energy")

# experimental_configs key of the engine's energy settings (serving.engine.engines).
ENERGY_KEY = "fabriek_energy"


@dataclass(frozen=True)
class EnergySettings:
    """What an engine replica needs to meter itself (from the platform config).

    Args:
        pool / accelerator: the engine's pool and its hardware kind.
        counters: ``auto`` or ``none`` (``PoolEnergySpec.counters``).
        sample_interval_s / prefill_weight / powercap_root: ``EnergySpec``'s.
    """

    pool: str
    accelerator: str
    counters: str = "auto"
    sample_interval_s: float = 1.0
    prefill_weight: float = 0.1
    powercap_root: str = "/sys/class/powercap"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class EngineEnergy:
    """The replica's accountant, its timer, its metrics and its reports.

    Args:
        accountant: the replica's ``EnergyAccountant``.
        pool / replica_id: who reports.
        interval_s: time between closes.
        report: sends ``PowerReport`` fields to the power governor (None: nobody to tell).
    """

    def __init__(self, accountant: EnergyAccountant, *, pool: str, replica_id: str, interval_s: float,
                 report: Callable[..., None] | None = None):
        self._accountant = accountant
        self._pool = pool
        self._replica_id = replica_id
        self._interval_s = interval_s
        self._report = report
        self._task: asyncio.Task | None = None
        self._energy = Counter("fabriek_engine_energy_joules",
                               "Energy the engine's hardware counters measured (NVML, RAPL), by pool.",
                               tag_keys=("pool",))
        self._idle = Counter("fabriek_engine_idle_energy_joules",
                             "Measured energy of intervals in which no request ran, by pool.",
                             tag_keys=("pool",))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def finish(self, request_id: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The request's joules, its last interval closed now (None: not measured)."""
        joules, interval = self._accountant.finish(request_id, prompt_tokens, completion_tokens)
        self._count(interval)
        return joules

    async def _run(self) -> None:
        reported_joules, reported_at = self._accountant.total_joules, time.monotonic()
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                interval = self._accountant.close()
                self._count(interval)
                # Everything since the last report, the intervals requests closed included.
                now = time.monotonic()
                joules = None if interval.joules is None else self._accountant.total_joules - reported_joules
                seconds = now - reported_at
                reported_joules, reported_at = self._accountant.total_joules, now
                if self._report is not None:
                    self._report(self._pool, self._replica_id, joules, seconds, interval.running)
            except Exception:  # a meter that fails once must not stop metering for good
                logger.exception("energy: closing an interval failed")

    def _count(self, interval: Interval) -> None:
        tags = {"pool": self._pool}
        if interval.joules:
            self._energy.inc(interval.joules, tags)
        if interval.idle_joules:
            self._idle.inc(interval.idle_joules, tags)

"""Which engine deployments can take requests right now, probed in the background."""

from __future__ import annotations

import asyncio
import logging
from typing import Hashable, Mapping

from ray.serve.handle import DeploymentHandle

logger = logging.getLogger("fabriek.readiness")


class EngineReadiness:
    """Tracks readiness per engine deployment by calling its ``check_health``.

    A request whose engines are not ready is refused at once with 503 instead of
    queueing behind an engine that is still loading or has died.

    Args:
        engines: key (fabriek uses ``routers.Route``: pool and model) -> handle of the
            engine deployment.
        probe_timeout_s: how long one health probe may take.
        ready_interval_s / not_ready_interval_s: probe period while all models are
            ready / while any is not (short, so start-up is noticed quickly).
    """

    def __init__(self, engines: Mapping[Hashable, DeploymentHandle], *, probe_timeout_s: float = 10.0,
                 ready_interval_s: float = 5.0, not_ready_interval_s: float = 0.5):
        self._engines = dict(engines)
        self._ready: set[Hashable] = set()
        self._probe_timeout_s = probe_timeout_s
        self._ready_interval_s = ready_interval_s
        self._not_ready_interval_s = not_ready_interval_s
        self._task: asyncio.Task | None = None

    def is_ready(self, key: Hashable) -> bool:
        """Whether the last probe of this engine succeeded."""
        return key in self._ready

    def status(self) -> dict[Hashable, str]:
        """key -> "ready" | "not ready", for the health endpoint."""
        return {m: "ready" if m in self._ready else "not ready" for m in self._engines}

    def start(self) -> None:
        """Start probing in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe_forever())

    async def stop(self) -> None:
        """Stop probing."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def probe_once(self) -> None:
        """Probe every engine concurrently and update the ready set."""
        results = await asyncio.gather(*(self._probe(m, h) for m, h in self._engines.items()))
        for key, ok in zip(self._engines, results):
            if ok is None:
                continue  # no answer in time: busy or still loading; keep what we knew
            if ok and key not in self._ready:
                logger.info("engine %s is ready", key)
                self._ready.add(key)
            elif not ok and key in self._ready:
                logger.warning("engine %s stopped answering health probes", key)
                self._ready.discard(key)

    async def _probe(self, key: Hashable, handle: DeploymentHandle) -> bool | None:
        """True: healthy; False: the engine failed its check; None: no answer in time.

        A probe queues behind requests like any call, so a saturated engine answers late;
        that must not turn every client away with 503.
        """
        response = handle.check_health.remote()
        try:
            await asyncio.wait_for(response, self._probe_timeout_s)
            return True
        except asyncio.TimeoutError:
            response.cancel()  # do not let unanswered probes pile up in the queue
            return None
        except Exception as err:  # the engine answered with a failure, or its actor died
            logger.debug("health probe of %s failed: %r", key, err)
            return False

    async def _probe_forever(self) -> None:
        while True:
            await self.probe_once()
            all_ready = len(self._ready) == len(self._engines)
            await asyncio.sleep(self._ready_interval_s if all_ready else self._not_ready_interval_s)

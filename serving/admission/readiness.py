"""Which engine deployments can take requests right now, probed in the background.

A probe that gets no answer in time marks its engine not ready, like one that fails: an
engine that does not answer a health check within ``probe_timeout_s`` (10 s) is stuck or
gone, and requests sent to it would hang. A saturated engine still answers in time: the
probe does not queue behind requests (``FabriekLLMServer.probe_engine`` makes one round
trip to vLLM's engine core, which answers it between steps, and Ray Serve LLM lets a replica
take 1e9 calls at once, so the admission controller's ``max_running`` bounds the load, not
the replica); it waits for the replica's event loop and one engine step. Probes can queue if a pool's ``deployment.max_ongoing_requests``
is at or below its ``admission.max_running``: keep it above. A wrong verdict costs little:
no new request goes to the engine, so its load drains, and the first probe that answers
(``not_ready_interval_s`` later) marks it ready again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Hashable, Mapping

logger = logging.getLogger("fabriek.readiness")


class EngineReadiness:
    """Tracks readiness per engine by calling its health probe.

    A request whose engines are not ready is refused at once with 503 instead of
    queueing behind an engine that is still loading or has died.

    Args:
        engines: key (fabriek uses ``routers.Route``: pool and model) -> a call of the
            engine's health probe: over a handle (``handle.probe_engine.remote``) or
            in-process; what it returns is awaitable and has ``cancel()``.
        probe_timeout_s: how long one health probe may take.
        timeouts_until_not_ready: consecutive unanswered probes after which a ready
            engine is marked not ready (1: the first; see the module's docstring).
        ready_interval_s / not_ready_interval_s: probe period while all models are
            ready / while any is not (short, so start-up is noticed quickly).
    """

    def __init__(self, engines: Mapping[Hashable, Callable[[], Awaitable[Any]]], *, probe_timeout_s: float = 10.0,
                 timeouts_until_not_ready: int = 1, ready_interval_s: float = 5.0,
                 not_ready_interval_s: float = 0.5):
        if timeouts_until_not_ready < 1:
            raise ValueError(f"timeouts_until_not_ready must be 1 or more, not {timeouts_until_not_ready}")
        self._engines = dict(engines)
        self._ready: set[Hashable] = set()
        self._num_timeouts = dict.fromkeys(self._engines, 0)  # consecutive, per engine
        self._probe_timeout_s = probe_timeout_s
        self._timeouts_until_not_ready = timeouts_until_not_ready
        self._ready_interval_s = ready_interval_s
        self._not_ready_interval_s = not_ready_interval_s
        self._task: asyncio.Task | None = None

    def is_ready(self, key: Hashable) -> bool:
        """Whether this engine's last answer to a probe was healthy, and it has not since
        missed ``timeouts_until_not_ready`` probes in a row."""
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
                self._num_timeouts[key] += 1
                if key in self._ready and self._num_timeouts[key] >= self._timeouts_until_not_ready:
                    logger.warning("engine %s did not answer %d health probe(s) within %g s: "
                                   "not ready until it does", key, self._num_timeouts[key],
                                   self._probe_timeout_s)
                    self._ready.discard(key)
                continue
            self._num_timeouts[key] = 0
            if ok and key not in self._ready:
                logger.info("engine %s is ready", key)
                self._ready.add(key)
            elif not ok and key in self._ready:
                logger.warning("engine %s failed its health probe: not ready", key)
                self._ready.discard(key)

    async def _probe(self, key: Hashable, check_health: Callable[[], Awaitable[Any]]) -> bool | None:
        """True: healthy; False: the engine failed its check; None: no answer in time."""
        response = check_health()
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

"""Which engine deployments can take requests right now, probed in the background.

An engine is taken out of service only when it has really stopped: its probe fails (its
process or actor is gone), or it has not answered one for ``stall_after_s`` (30 s). A probe
(``FabriekLLMServer.probe_engine``) makes one round trip to vLLM's engine core, which answers
between steps, so a core that steps at all answers; one that does not for 30 s is wedged (a
hung device, a stopped process) and requests sent to it would hang too. A slow answer is not
a verdict: on a busy machine, a long prefill or a first compile, a probe can take seconds,
and marking the engine not ready then took a whole pool out of service for everyone in it
(`make serve`'s first SDK calls got 503s). Each engine has at most one probe outstanding, so
probes never pile up behind a slow engine; ``probe_timeout_s`` is only how long one round
waits for answers before it looks at the clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Hashable, Mapping

logger = logging.getLogger("fabriek.readiness")


class EngineReadiness:
    """Tracks readiness per engine by calling its health probe.

    A request whose engines are not ready is refused at once with 503 instead of
    queueing behind an engine that is still loading or has stopped.

    Args:
        engines: key (fabriek uses ``routers.Route``: pool and model) -> a call of the
            engine's health probe: over a handle (``handle.probe_engine.remote``) or
            in-process; what it returns is awaitable.
        probe_timeout_s: how long one round waits for answers.
        stall_after_s: how long a ready engine may leave a probe unanswered before it is
            marked not ready (see the module's docstring).
        ready_interval_s / not_ready_interval_s: probe period while all models are
            ready / while any is not (short, so start-up is noticed quickly).
    """

    def __init__(self, engines: Mapping[Hashable, Callable[[], Awaitable[Any]]], *, probe_timeout_s: float = 10.0,
                 stall_after_s: float = 30.0, ready_interval_s: float = 5.0, not_ready_interval_s: float = 0.5):
        if stall_after_s < probe_timeout_s:
            raise ValueError(f"stall_after_s ({stall_after_s}) must be at least probe_timeout_s ({probe_timeout_s})")
        self._engines = dict(engines)
        self._ready: set[Hashable] = set()
        self._pending: dict[Hashable, tuple[asyncio.Task, float]] = {}  # the outstanding probe, and since when
        self._probe_timeout_s = probe_timeout_s
        self._stall_after_s = stall_after_s
        self._ready_interval_s = ready_interval_s
        self._not_ready_interval_s = not_ready_interval_s
        self._task: asyncio.Task | None = None

    def is_ready(self, key: Hashable) -> bool:
        """Whether this engine's last probe was answered healthy, and no probe has since been
        left unanswered for ``stall_after_s``."""
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
        for task, _ in self._pending.values():
            task.cancel()
        self._pending.clear()

    async def probe_once(self) -> None:
        """Send a probe to every engine that has none outstanding, wait up to
        ``probe_timeout_s`` for answers, and update the ready set."""
        loop = asyncio.get_running_loop()
        for key, check_health in self._engines.items():
            if key not in self._pending:
                self._pending[key] = (loop.create_task(_answered(check_health)), time.monotonic())
        if not self._pending:
            return
        await asyncio.wait([task for task, _ in self._pending.values()], timeout=self._probe_timeout_s)
        for key in list(self._pending):
            task, since = self._pending[key]
            if not task.done():
                waited = time.monotonic() - since
                if waited >= self._stall_after_s:
                    if key in self._ready:
                        logger.warning("engine %s has not answered a health probe for %.1f s: not ready "
                                       "until it does", key, waited)
                        self._ready.discard(key)
                    # A fresh probe next round, in case this one was lost rather than unanswered.
                    task.cancel()
                    del self._pending[key]
                continue
            del self._pending[key]
            healthy = task.result()
            if healthy and key not in self._ready:
                logger.info("engine %s is ready", key)
                self._ready.add(key)
            elif not healthy and key in self._ready:
                logger.warning("engine %s failed its health probe: not ready", key)
                self._ready.discard(key)

    async def _probe_forever(self) -> None:
        while True:
            await self.probe_once()
            all_ready = len(self._ready) == len(self._engines)
            await asyncio.sleep(self._ready_interval_s if all_ready else self._not_ready_interval_s)


async def _answered(check_health: Callable[[], Awaitable[Any]]) -> bool:
    """True: the engine answered healthy; False: it answered with a failure, or its actor died."""
    try:
        await check_health()
        return True
    except Exception as err:  # noqa: BLE001 (any failure of the probe is the verdict)
        logger.debug("health probe failed: %r", err)
        return False

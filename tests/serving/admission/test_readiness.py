"""Engine readiness from health probes: an answer marks an engine ready; a failure marks it
not ready at once; a slow answer does not, only a probe left unanswered for ``stall_after_s``
does; each engine has one probe outstanding at most; every change is logged once.
Stand-in probes, no Ray."""

from __future__ import annotations

import asyncio
import logging

import pytest

from serving.admission.readiness import EngineReadiness

ROUND_S = 0.02   # probe_timeout_s: how long a round waits for answers
STALL_S = 0.3    # stall_after_s


class Engine:
    """A stand-in engine whose probe answers as ``behaviour`` says: ok, fail, hang, or
    ``slow`` (after ``slow_s``, longer than a round but shorter than a stall)."""

    def __init__(self, behaviour: str = "ok", slow_s: float = 0.1):
        self.behaviour = behaviour
        self.slow_s = slow_s
        self.probes = 0
        self.cancelled = 0
        self.outstanding = self.most_outstanding = 0

    async def check_health(self) -> None:
        self.probes += 1
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        try:
            if self.behaviour == "slow":
                await asyncio.sleep(self.slow_s)
            while self.behaviour == "hang":
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.outstanding -= 1
        if self.behaviour == "fail":
            raise RuntimeError("engine dead")


def readiness_of(**engines: Engine) -> EngineReadiness:
    return EngineReadiness({k: e.check_health for k, e in engines.items()}, probe_timeout_s=ROUND_S,
                           stall_after_s=STALL_S)


async def rounds(readiness: EngineReadiness, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await readiness.probe_once()


def test_a_slow_but_answering_engine_stays_ready():
    async def scenario():
        engine = Engine()
        readiness = readiness_of(a=engine)
        await readiness.probe_once()
        assert readiness.is_ready("a")
        engine.behaviour = "slow"  # each answer takes 5 rounds: a busy machine, a long prefill
        await rounds(readiness, 1.0)
        assert readiness.is_ready("a")
        assert engine.most_outstanding == 1 and engine.cancelled == 0  # no pile-up, nothing given up
        await readiness.stop()
    asyncio.run(scenario())


def test_an_engine_silent_past_the_stall_bound_is_not_ready_logged_once_then_ready_again(caplog):
    async def scenario():
        engine, other = Engine(), Engine()
        readiness = readiness_of(a=engine, b=other)
        await readiness.probe_once()
        engine.behaviour = "hang"  # a stopped engine core: requests sent to it would hang too
        caplog.clear()
        await rounds(readiness, STALL_S / 2)
        assert readiness.is_ready("a")  # not yet: it may only be slow
        await rounds(readiness, STALL_S * 2)
        assert not readiness.is_ready("a") and readiness.is_ready("b")
        assert engine.cancelled >= 1 and engine.most_outstanding == 1  # given up and resent, never two
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "has not answered a health probe for" in warnings[0]
        engine.behaviour = "ok"  # thawed: ready at its next answer
        await rounds(readiness, STALL_S)
        assert readiness.is_ready("a")
        await readiness.stop()
    asyncio.run(scenario())


def test_a_failed_probe_marks_not_ready_at_once_and_a_loading_engine_stays_not_ready():
    async def scenario():
        engine, loading = Engine(), Engine("hang")
        readiness = readiness_of(a=engine, loading=loading)
        await readiness.probe_once()
        assert readiness.status() == {"a": "ready", "loading": "not ready"}
        engine.behaviour = "fail"
        await readiness.probe_once()
        assert not readiness.is_ready("a")
        loading.behaviour = "ok"
        await rounds(readiness, ROUND_S * 3)
        assert readiness.is_ready("loading")
        await readiness.stop()
    asyncio.run(scenario())


def test_the_stall_bound_is_at_least_a_round():
    with pytest.raises(ValueError, match="must be at least probe_timeout_s"):
        EngineReadiness({}, probe_timeout_s=10, stall_after_s=5)

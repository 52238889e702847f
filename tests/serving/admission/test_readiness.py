"""Engine readiness from health probes: an answer marks an engine ready, a failure or a probe
unanswered in time marks it not ready (after ``timeouts_until_not_ready`` in a row), logged
once per change; an unanswered probe is cancelled. Stand-in handles, no Ray."""

from __future__ import annotations

import asyncio
import logging

import pytest

from serving.admission.readiness import EngineReadiness

TIMEOUT_S = 0.05


class Probe:
    """The awaitable a handle's ``check_health.remote()`` returns."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.is_cancelled = False

    def __await__(self):
        return self._answer().__await__()

    async def _answer(self):
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        if self.behaviour == "fail":
            raise RuntimeError("engine dead")

    def cancel(self) -> None:
        self.is_cancelled = True


class Engine:
    """A stand-in engine: answers each probe as ``behaviour`` says (ok, fail, hang); its
    ``check_health`` is what the readiness tracker calls."""

    def __init__(self, behaviour: str = "ok"):
        self.behaviour = behaviour
        self.probes: list[Probe] = []
    def check_health(self) -> Probe:
        self.probes.append(Probe(self.behaviour))
        return self.probes[-1]


def probe(readiness: EngineReadiness, times: int = 1) -> None:
    async def scenario():
        for _ in range(times):
            await readiness.probe_once()
    asyncio.run(scenario())


def test_an_unanswered_probe_marks_a_ready_engine_not_ready_logged_once(caplog):
    engine, other = Engine(), Engine()
    readiness = EngineReadiness({"a": engine.check_health, "b": other.check_health}, probe_timeout_s=TIMEOUT_S)
    probe(readiness)
    assert readiness.status() == {"a": "ready", "b": "ready"}
    engine.behaviour = "hang"  # stuck: requests sent to it would hang too
    caplog.clear()
    probe(readiness, times=3)
    assert not readiness.is_ready("a") and readiness.is_ready("b")
    assert all(p.is_cancelled for p in engine.probes[1:])  # no unanswered probes pile up
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "did not answer 1 health probe(s) within 0.05 s" in warnings[0]
    engine.behaviour = "ok"  # it answers again: ready at the next probe
    probe(readiness)
    assert readiness.is_ready("a")


def test_with_two_timeouts_one_late_answer_is_forgiven():
    engine = Engine()
    readiness = EngineReadiness({"a": engine.check_health}, probe_timeout_s=TIMEOUT_S, timeouts_until_not_ready=2)
    probe(readiness)
    engine.behaviour = "hang"
    probe(readiness)
    assert readiness.is_ready("a")
    engine.behaviour = "ok"  # an answer resets the count
    probe(readiness)
    engine.behaviour = "hang"
    probe(readiness)
    assert readiness.is_ready("a")
    probe(readiness)
    assert not readiness.is_ready("a")


def test_a_failed_probe_marks_not_ready_at_once_and_a_loading_engine_stays_not_ready():
    engine, loading = Engine(), Engine("hang")
    readiness = EngineReadiness({"a": engine.check_health, "loading": loading.check_health}, probe_timeout_s=TIMEOUT_S,
                                timeouts_until_not_ready=3)
    probe(readiness)
    assert readiness.status() == {"a": "ready", "loading": "not ready"}
    engine.behaviour = "fail"
    probe(readiness)
    assert not readiness.is_ready("a")
    loading.behaviour = "ok"
    probe(readiness)
    assert readiness.is_ready("loading")


def test_timeouts_until_not_ready_is_at_least_one():
    with pytest.raises(ValueError, match="1 or more"):
        EngineReadiness({}, timeouts_until_not_ready=0)

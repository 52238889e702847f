"""Parsing vLLM's CPU binding into the cores a pool's engine is pinned to; the pool's niceness."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serving.engine.cpu_affinity import (POOL_NICE_ENV, cores_of, pin_process, pin_to_pool_cores, renice_process,
                                         take_pool_niceness)


@pytest.mark.parametrize(("bind", "cores"), [
    ("0", {0}), ("1", {1}), ("0-3,8", {0, 1, 2, 3, 8}), ("0-1|2-3", {0, 1, 2, 3}),
    ("auto", None), ("nobind", None), ("", None),
])
def test_cores_of(bind, cores):
    assert cores_of(bind) == cores


def test_pins_this_process_to_the_bound_cores(monkeypatch):
    before = os.sched_getaffinity(0)
    core = min(before)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", str(core))
    try:
        assert pin_to_pool_cores() == {core}
        assert {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")} == {frozenset({core})}
    finally:
        pin_process(before)  # every thread, as it pinned them


def test_unavailable_cores_are_not_pinned(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "4096")
    assert pin_to_pool_cores() is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_pins_to_pool_cores_outside_the_inherited_system_cores(monkeypatch):
    """`fabriek serve` starts Ray on `local.system_cpus`; an engine moves to its pool's cores."""
    before = os.sched_getaffinity(0)
    system, pool = max(before), min(before)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", str(pool))
    try:
        os.sched_setaffinity(0, {system})
        assert pin_to_pool_cores() == {pool}
        assert os.sched_getaffinity(0) == {pool}
    finally:
        pin_process(before)


def in_a_thread(function):
    """Runs ``function`` in a thread of its own (niceness is per thread on Linux: the test
    process keeps its own) and returns what it returned and the thread's niceness after."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(
        result=function(), nice=os.getpriority(os.PRIO_PROCESS, 0)))
    thread.start()
    thread.join()
    return out["result"], out["nice"]


def test_takes_the_pool_niceness_on_every_thread():
    """The engine replica (also the domain's front door) is a Ray worker whose threads exist
    before its code runs: all of them take the pool's niceness (in a child process: the test
    process keeps its own)."""
    script = """
import os, threading
started, stop = threading.Event(), threading.Event()
threading.Thread(target=lambda: (started.set(), stop.wait())).start()
started.wait()
nicer = min(os.getpriority(os.PRIO_PROCESS, 0) + 3, 19)
os.environ["FABRIEK_POOL_CPU_NICE"] = str(nicer)
from serving.engine.cpu_affinity import take_pool_niceness
assert take_pool_niceness() == nicer
print(sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}), nicer)
stop.set()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3]).stdout.split()
    assert out[0] == f"[{out[1]}]"


def test_no_pool_niceness_leaves_the_thread_as_it_is(monkeypatch):
    monkeypatch.delenv(POOL_NICE_ENV, raising=False)
    assert in_a_thread(take_pool_niceness) == (None, os.getpriority(os.PRIO_PROCESS, 0))


def test_a_niceness_the_process_may_not_take_is_warned_about(monkeypatch, caplog):
    def refused(*_):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "setpriority", refused)
    monkeypatch.setenv(POOL_NICE_ENV, "-5")
    assert take_pool_niceness() is None
    assert "cannot take niceness -5" in caplog.text


def test_renices_every_thread_of_the_process():
    """The front door's processes are Ray workers whose threads exist before its code runs:
    all of them take the niceness (in a child process: the test process keeps its own)."""
    script = """
import os, threading
from serving.engine.cpu_affinity import renice_process
started, stop = threading.Event(), threading.Event()
threading.Thread(target=lambda: (started.set(), stop.wait())).start()
started.wait()
nicer = min(os.getpriority(os.PRIO_PROCESS, 0) + 4, 19)
assert renice_process(nicer)
print(sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}), nicer)
stop.set()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3]).stdout.split()
    assert out[0] == f"[{out[1]}]"


def test_a_process_niceness_it_may_not_take_is_warned_about(monkeypatch, caplog):
    def refused(*_):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "setpriority", refused)
    assert renice_process(-5) is False
    assert "cannot take niceness -5" in caplog.text

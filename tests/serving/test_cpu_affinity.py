"""Parsing vLLM's CPU binding into the cores a pool's engine is pinned to."""

import os

import pytest

from serving.cpu_affinity import cores_of, pin_to_pool_cores


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
        assert os.sched_getaffinity(0) == {core}
    finally:
        os.sched_setaffinity(0, before)


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
        os.sched_setaffinity(0, before)

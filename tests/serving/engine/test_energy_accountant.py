"""Energy per request in the engine replica: a real meter over a powercap tree (this machine
has no RAPL) advanced by the test, and request progress as vLLM's state would report it.

What must hold: every joule the meter counted goes to a request or to idle, exactly; a request
gets its share of each interval it worked in; a request's last interval is closed when it
finishes; no counter means None, never a number."""

from __future__ import annotations

import os
import time

import pytest

from serving.engine.energy_accountant import FORGET_AFTER_S, EnergyAccountant, fabriek_request_id
from serving.engine.energy_meter import EnergyMeter, ProcessCpuShare, engine_meter, rapl_counters
from tests.serving.engine.test_energy_meter import zone

A, B = "fabriek-" + "a" * 32, "fabriek-" + "b" * 32


class Package:
    """A RAPL package in a powercap tree, and the joules the test says it drew."""

    def __init__(self, root):
        self.zone = zone(root, "intel-rapl:0", "package-0", 0)
        self.uj = 0

    def draw(self, joules: float) -> None:
        self.uj += round(joules * 1e6)
        (self.zone / "energy_uj").write_text(f"{self.uj}\n")


@pytest.fixture
def package(tmp_path):
    return Package(tmp_path)


def accountant(tmp_path, progress: dict, clock=None, prefill_weight=0.5) -> EnergyAccountant:
    meter = EnergyMeter(rapl_counters(tmp_path))
    return EnergyAccountant(meter, lambda: dict(progress), prefill_weight,
                            clock=clock or time.monotonic)


def test_an_interval_is_divided_by_weighted_tokens_and_adds_up(tmp_path, package):
    progress = {A: (0, 0), B: (0, 0)}
    acc = accountant(tmp_path, progress)
    progress.update({A: (100, 10), B: (0, 30)})  # A prefilled 100 (weight 0.5) and decoded 10
    package.draw(90.0)
    interval = acc.close()
    assert interval.joules == pytest.approx(90.0) and interval.running == 2
    assert acc.finish(A, 100, 10)[0] == pytest.approx(90.0 * 60 / 90)  # nothing more since
    assert acc.finish(B, 0, 30)[0] == pytest.approx(90.0 * 30 / 90)
    assert acc.total_joules == pytest.approx(90.0) and acc.idle_joules == 0


def test_an_interval_with_no_work_is_idle_and_not_a_requests(tmp_path, package):
    progress = {A: (10, 1)}
    acc = accountant(tmp_path, progress)
    package.draw(5.0)
    acc.close()
    package.draw(7.0)  # A did nothing in this one
    acc.close()
    assert acc.idle_joules == pytest.approx(7.0)
    assert acc.finish(A, 10, 1)[0] == pytest.approx(5.0)


def test_a_finished_requests_last_interval_is_closed_with_its_final_usage(tmp_path, package):
    progress = {A: (0, 0), B: (0, 0)}
    acc = accountant(tmp_path, progress, prefill_weight=1.0)
    progress.update({A: (10, 10), B: (10, 10)})
    package.draw(40.0)
    acc.close()  # 20 J each
    del progress[A]  # vLLM let A go after 10 more tokens; B did 10 more as well
    progress[B] = (10, 20)
    package.draw(20.0)
    assert acc.finish(A, 10, 20)[0] == pytest.approx(20.0 + 10.0)
    assert acc.finish(B, 10, 20)[0] == pytest.approx(20.0 + 10.0)
    assert acc.total_joules == pytest.approx(60.0)


def test_sequences_of_one_request_count_together():
    rid = "fabriek-" + "c" * 32
    assert fabriek_request_id(f"chatcmpl-{rid}") == rid
    assert fabriek_request_id(f"cmpl-{rid}-1") == rid
    assert fabriek_request_id("chatcmpl-4b7e") is None  # not sent by fabriek: not accounted


def test_without_work_since_the_last_close_a_request_gets_nothing_of_the_interval(tmp_path, package):
    progress = {A: (0, 5), B: (0, 10)}
    acc = accountant(tmp_path, progress, prefill_weight=1.0)
    package.draw(20.0)
    acc.close()  # both did work since the start: 5 and 10 tokens
    package.draw(9.0)
    progress[B] = (0, 13)  # only B moved
    acc.close()
    assert acc.finish(A, 0, 5)[0] == pytest.approx(20.0 * 5 / 15)
    assert acc.finish(B, 0, 13)[0] == pytest.approx(20.0 * 10 / 15 + 9.0)


def test_without_a_counter_every_answer_is_none(tmp_path):
    acc = EnergyAccountant(EnergyMeter([]), lambda: {A: (5, 5)}, 1.0)
    assert acc.close().joules is None
    assert acc.finish(A, 5, 5)[0] is None
    assert acc.total_joules == 0


def test_a_request_never_closed_is_forgotten(tmp_path, package):
    now = [0.0]
    progress = {A: (1, 1)}
    acc = accountant(tmp_path, progress, clock=lambda: now[0])
    package.draw(1.0)
    acc.close()
    del progress[A]  # gone from vLLM, and its front door (elsewhere) never closes it
    now[0] = 1.0
    acc.close()  # missed from here on
    now[0] = FORGET_AFTER_S + 2
    acc.close()
    assert acc.finish(A, 1, 1)[0] == 0.0  # nothing left for it: it was forgotten


def test_the_cpu_share_of_this_process_is_between_zero_and_one():
    share = ProcessCpuShare(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass  # this process keeps a CPU busy
    part = share.sample()
    assert 0.0 < part <= 1.0


def test_a_cpu_pool_meters_rapl_by_cpu_share_and_none_means_not_measured(tmp_path, package):
    meter, line = engine_meter("cpu", [], powercap_root=tmp_path)
    assert "RAPL" in line and "CPU time" in line
    package.draw(10.0)
    assert 0.0 <= meter.sample() <= 10.0
    meter, line = engine_meter("cpu", [], counters="none", powercap_root=tmp_path)
    assert meter.sample() is None and "not measured" in line
    meter, line = engine_meter("cpu", [], powercap_root=tmp_path / "absent")
    assert meter.sample() is None and "not measured" in line
    meter, line = engine_meter("gpu", [0], powercap_root=tmp_path)  # no NVML on this machine
    assert meter.sample() is None and "not measured" in line

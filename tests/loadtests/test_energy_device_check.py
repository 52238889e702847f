"""The energy device check (loadtests/energy_device_check.py) without a GPU: its continuous
batching and per-interval bookkeeping under fabriek's real EnergyMeter over a counter whose
joules are known, and its --dry-run path on the CPU (energy reported as not measured)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from loadtests import energy_device_check as edc
from serving.engine.energy_meter import EnergyMeter


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeCounter:
    """A cumulative counter drawing ``idle_w`` plus ``busy_w`` while the fake engine works."""

    def __init__(self, clock: FakeClock, name: str = "fake:0"):
        self.name = name
        self.clock = clock
        self.joules = 1000.0  # since "the driver loaded"
        self.reads = 0

    def read_joules(self) -> float:
        self.reads += 1
        return self.joules

    def delta(self, before: float, after: float) -> float:
        return after - before


class FakeEngine:
    """Advances the clock and the counter by known amounts per prefill token and decode step."""

    def __init__(self, clock: FakeClock, counter: FakeCounter, *, prefill_s_per_token=1e-4, decode_s=0.01,
                 watts=300.0):
        self.clock, self.counter = clock, counter
        self.prefill_s_per_token, self.decode_s, self.watts = prefill_s_per_token, decode_s, watts
        self.prefills: list[tuple[int, int]] = []
        self.decodes = 0
        self.syncs = 0

    def _spend(self, seconds: float) -> None:
        self.clock.now += seconds
        self.counter.joules += self.watts * seconds

    def reset(self, batch_size: int) -> None:
        pass

    def prefill(self, slot: int, n_tokens: int) -> None:
        self.prefills.append((slot, n_tokens))
        self._spend(self.prefill_s_per_token * n_tokens)

    def decode(self) -> None:
        self.decodes += 1
        self._spend(self.decode_s)

    def sync(self) -> None:
        self.syncs += 1


def test_scheduler_keeps_the_batch_full_and_refills_a_finished_slot_before_the_next_step():
    clock = FakeClock()
    engine = FakeEngine(clock, FakeCounter(clock))
    scheduler = edc.Scheduler(4, prompt_len=(3, 9), output_len=(1, 5), seed=1)
    first = scheduler.step(engine)
    assert len(first.prefilled) == 4 and len(first.decoded) == 4  # all four prefilled, then one token each
    for _ in range(50):
        before = {r.rid for r in scheduler.running}
        work = scheduler.step(engine)
        assert len(work.decoded) == 4  # four running in every decode step
        assert set(work.prefilled) == set(work.decoded) - before  # only the new requests prefill
        assert all(r.decoded == r.output_len for r in work.finished)
    assert engine.decodes == 51
    assert sum(n for _, n in engine.prefills) > 0 and {slot for slot, _ in engine.prefills} == {0, 1, 2, 3}


def test_book_attributes_each_interval_and_keeps_an_interval_without_work_as_idle():
    book = edc.Book(prefill_weight=0.5)
    book.record(edc.StepWork({"a": 10}, {"a": 1, "b": 1}, ()))
    book.close(7.0)  # a: 0.5 * 10 + 1 = 6, b: 1
    book.close(2.0)  # nothing ran
    assert book.request_joules == pytest.approx({"a": 6.0, "b": 1.0})
    assert book.idle_joules == 2.0 and book.idle_intervals == 1 and book.intervals == 2
    assert book.attributed_joules + book.idle_joules == pytest.approx(book.metered_joules) == 9.0
    assert (book.prefilled_tokens, book.decoded_tokens) == (10, 2)


def test_window_attributed_plus_idle_is_the_counters_total_under_a_real_energy_meter():
    clock = FakeClock()
    counter = FakeCounter(clock)
    engine = FakeEngine(clock, counter, watts=300.0)
    scheduler = edc.Scheduler(8, prompt_len=(16, 64), output_len=(4, 32), seed=3)
    result = edc.run_window(engine, scheduler, prefill_weight=0.05, seconds=5.0, interval_s=0.2,
                            counters=[counter], clock=clock, warmup_s=1.0)
    # The window's total from the separate pair of reads: power times the window's engine time.
    assert result.nvml_joules == pytest.approx(300.0 * result.seconds)
    assert result.attributed_plus_idle_joules == pytest.approx(result.nvml_joules, rel=1e-9)
    assert result.relative_difference < 1e-9 and result.check == "PASS"
    assert result.idle_joules == 0.0  # continuous batching: no interval without a request
    assert 20 <= result.intervals <= 30 and result.idle_intervals == 0
    assert result.output_tokens == 8 * result.steps  # eight running in every step of the window
    assert result.joules_per_output_token == pytest.approx(result.nvml_joules / result.output_tokens)
    assert result.mean_power_w == pytest.approx(300.0)
    assert result.responses_whole > 0 and result.joules_per_response_mean > 0
    assert engine.syncs >= result.intervals + 1  # synchronized before every meter read


def test_window_mismatch_between_meter_and_total_fails_the_check():
    clock = FakeClock()
    counter = FakeCounter(clock)
    engine = FakeEngine(clock, counter)

    class Leaky(FakeCounter):  # overcounts long spans: the window's own pair of reads sees 10% more
        def delta(self, before, after):
            return (after - before) * (1.1 if after - before > 150.0 else 1.0)  # intervals: ~60 J

    leaky = Leaky(clock)
    engine.counter = leaky
    scheduler = edc.Scheduler(2, prompt_len=(4, 8), output_len=(2, 4))
    result = edc.run_window(engine, scheduler, prefill_weight=0.1, seconds=1.0, interval_s=0.2,
                            counters=[leaky], clock=clock)
    assert result.check == "FAIL" and result.relative_difference > 0.02


def test_fake_counter_works_with_the_platforms_energy_meter():
    clock = FakeClock()
    counter = FakeCounter(clock)
    meter = EnergyMeter([counter])
    counter.joules += 12.5
    assert meter.sample() == 12.5 and meter.counters == ("fake:0",)


TINY = ["--dry-run", "--seconds", "0.6", "--warmup", "0.1", "--interval", "0.1", "--batch-sizes", "1,4",
        "--hidden", "32", "--mlp", "64", "--layers", "2", "--heads", "2", "--vocab", "64",
        "--prompt-len", "2:12", "--output-len", "2:6", "--repeats", "2"]


def test_dry_run_exercises_the_workload_and_reports_energy_as_not_measured(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "check.json"
    assert edc.main([*TINY, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["measured"] is False and report["pass"] is None and report["meter"] is None
    assert report["machine"]["device"] == "cpu" and "torch" in report["machine"]
    assert report["config"]["batch_sizes"] == [1, 4] and report["config"]["model"]["hidden"] == 32
    assert [r["batch_size"] for r in report["results"]] == [1, 4]
    for r in report["results"]:
        for name in ("nvml_joules", "attributed_joules", "idle_joules", "attributed_plus_idle_joules",
                     "relative_difference", "check", "joules_per_output_token", "joules_per_response_mean",
                     "mean_power_w"):
            assert r[name] is None, name
        assert r["prefill_weight"] > 0 and r["output_tokens"] > 0 and r["tokens_per_s"] > 0
        assert r["output_tokens"] == r["batch_size"] * r["steps"] and r["intervals"] >= 1
        assert r["timing"]["timer"] == "host-clock" and r["timing"]["decode_batch"] == r["batch_size"]
    printed = capsys.readouterr().out
    assert "| B | prefill weight |" in printed and "not measured" in printed


def test_without_pynvml_the_real_check_says_so_and_exits_2(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynvml" else real(name, *a))
    assert edc.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "pynvml" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()

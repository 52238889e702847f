"""Energy counters: RAPL read from a powercap tree (a copy of the kernel's layout in a temporary
directory: this machine has none), packages only, across a wrap; NVML absent means no
counter; a meter with no counter reports None (not measured), never an estimate."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest

from serving.engine.energy_meter import EnergyMeter, nvml_counters, rapl_counters


def zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 262_143_328_850) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(f"{label}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def test_rapl_packages_are_counted_and_their_sub_zones_are_not(tmp_path):
    zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    zone(tmp_path, "intel-rapl:1", "package-1", 2_000_000)
    zone(tmp_path, "intel-rapl:0:0", "core", 500_000)  # already inside package-0
    counters = rapl_counters(tmp_path)
    assert [c.name for c in counters] == ["rapl:intel-rapl:0:package-0", "rapl:intel-rapl:1:package-1"]


def test_a_meter_reports_the_joules_between_samples(tmp_path):
    package = zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    meter = EnergyMeter(rapl_counters(tmp_path))
    (package / "energy_uj").write_text("3500000\n")
    assert meter.sample() == pytest.approx(2.5)
    (package / "energy_uj").write_text("4000000\n")
    assert meter.sample() == pytest.approx(0.5)


def test_a_wrapped_rapl_counter_still_gives_the_energy_between(tmp_path):
    package = zone(tmp_path, "intel-rapl:0", "package-0", 9_000_000, max_uj=10_000_000)
    meter = EnergyMeter(rapl_counters(tmp_path))
    (package / "energy_uj").write_text("1000000\n")  # wrapped at 10 J
    assert meter.sample() == pytest.approx(2.0)


def test_an_unreadable_zone_is_not_metered(tmp_path):
    package = zone(tmp_path, "intel-rapl:0", "package-0", 1)
    (package / "energy_uj").write_text("not a number\n")
    assert rapl_counters(tmp_path) == []


def test_no_counter_means_not_measured():
    assert rapl_counters(Path("/nonexistent/powercap")) == []
    assert EnergyMeter([]).sample() is None


def test_without_nvidia_ml_py_there_is_no_gpu_counter(monkeypatch):
    real_import = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    assert nvml_counters() == []

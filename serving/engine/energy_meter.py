"""The hardware's own energy counters, read where an engine runs: NVML on NVIDIA GPUs, RAPL on CPUs.

Energy is never estimated here. Each counter is cumulative (joules since some start); a
meter reads its counters at the start and end of an interval and reports the difference.
Where a machine exposes no counter (a VM without ``/sys/class/powercap``, a GPU driver
without the total-energy call), the meter has none and reports ``None``: not measured.

- **NVML** (``nvidia-ml-py``, imported as ``pynvml``, only where it is installed):
  ``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver loaded, per GPU
  (Volta and later).
- **RAPL** (Linux ``powercap``): ``/sys/class/powercap/intel-rapl:<n>/energy_uj`` per CPU
  package, microjoules, wrapping at ``max_energy_range_uj``. Only the packages are read,
  not their sub-zones (core, uncore, dram), which the package already counts.

Sampled by the caller on a timer, not per token.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

logger = logging.getLogger("fabriek.energy")

POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")  # a package; intel-rapl:0:0 is a sub-zone of it


class EnergyCounter(Protocol):
    """A cumulative hardware energy counter."""

    name: str

    def read_joules(self) -> float:
        """Joules since the counter's own start (it may wrap; see ``delta``)."""

    def delta(self, before: float, after: float) -> float:
        """Joules between two readings, across a wrap of the counter."""


@dataclass(frozen=True)
class RaplCounter:
    """One CPU package's RAPL energy counter.

    Args:
        zone: its powercap directory (``/sys/class/powercap/intel-rapl:0``).
    """

    zone: Path
    name: str = field(init=False)

    def __post_init__(self) -> None:
        label = (self.zone / "name").read_text().strip() if (self.zone / "name").is_file() else self.zone.name
        object.__setattr__(self, "name", f"rapl:{self.zone.name}:{label}")

    def read_joules(self) -> float:
        return int((self.zone / "energy_uj").read_text()) / 1e6

    def delta(self, before: float, after: float) -> float:
        if after >= before:
            return after - before
        span = int((self.zone / "max_energy_range_uj").read_text()) / 1e6
        return span - before + after  # wrapped once (read far more often than it wraps)


@dataclass(frozen=True)
class NvmlCounter:
    """One NVIDIA GPU's total-energy counter (millijoules since the driver loaded).

    Args:
        index: the GPU's NVML index.
        handle: its NVML device handle.
        nvml: the ``pynvml`` module.
    """

    index: int
    handle: object
    nvml: object
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"nvml:{self.index}")

    def read_joules(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3

    def delta(self, before: float, after: float) -> float:
        return max(0.0, after - before)  # 64-bit millijoules: does not wrap in practice


def rapl_counters(root: Path = POWERCAP_ROOT) -> list[RaplCounter]:
    """The CPU packages' RAPL counters this process may read (none without powercap, or where
    the kernel keeps ``energy_uj`` to root)."""
    counters = []
    for zone in sorted(root.glob("intel-rapl:*")) if root.is_dir() else []:
        if not _PACKAGE_ZONE.match(zone.name):
            continue
        try:
            int((zone / "energy_uj").read_text())
        except (OSError, ValueError) as err:
            logger.info("RAPL zone %s is not readable (%s): not metered", zone.name, type(err).__name__)
            continue
        counters.append(RaplCounter(zone))
    return counters


def nvml_counters(indices: Iterable[int] | None = None) -> list[NvmlCounter]:
    """The total-energy counters of the GPUs ``indices`` (all, when None), where NVML and
    the call exist; none otherwise."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        wanted = range(pynvml.nvmlDeviceGetCount()) if indices is None else indices
        counters = []
        for index in wanted:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises where not supported
            counters.append(NvmlCounter(index, handle, pynvml))
        return counters
    except pynvml.NVMLError as err:
        logger.info("NVML energy counters unavailable (%s): not metered", err)
        return []


class EnergyMeter:
    """Joules drawn by a set of counters between two calls of ``sample``.

    Args:
        counters: the counters of the hardware one engine uses; empty: not measured.
        share: for counters the engine shares with other processes (a CPU package): the
            engine's part of each interval (``ProcessCpuShare``); None: all of it.
    """

    def __init__(self, counters: Iterable[EnergyCounter], share: "ProcessCpuShare | None" = None):
        self._counters = list(counters)
        self._share = share
        self._last = [c.read_joules() for c in self._counters]

    @property
    def counters(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._counters)

    def sample(self) -> float | None:
        """Joules since the last sample (or since the meter was made); None: no counter."""
        if not self._counters:
            return None
        now = [c.read_joules() for c in self._counters]
        joules = sum(c.delta(before, after) for c, before, after in zip(self._counters, self._last, now))
        self._last = now
        return joules if self._share is None else joules * self._share.sample()


class ProcessCpuShare:
    """An engine's part of a CPU package's energy: its processes' CPU time over the busy CPU
    time of the whole machine, per interval.

    A RAPL package counter counts every process on the package: on a machine whose cores
    are split between pools (the embedded default puts two engines on one package), each
    engine takes the part its own processes (the replica and vLLM's engine core and workers)
    kept the CPUs busy; the rest (other engines, the platform's own processes) is not this
    engine's. On a machine with several packages the split is over all of them together.

    Args:
        pid: the engine replica's process; its children are looked for again every
            ``REFRESH_S`` (vLLM may start an engine core anew).
    """

    REFRESH_S = 10.0

    def __init__(self, pid: int | None = None):
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(pid)
        self._processes: dict[int, object] = {}
        self._cpu: dict[int, float] = {}
        self.refresh()
        self._busy = self._machine_busy()

    def refresh(self) -> None:
        """Find the engine's processes again (vLLM starts its engine core after the replica)."""
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except self._psutil.Error:
            processes = [self._root]
        for process in processes:
            if process.pid not in self._processes:
                self._processes[process.pid] = process
                self._cpu[process.pid] = self._cpu_of(process) or 0.0
        self._refreshed_at = time.monotonic()

    def sample(self) -> float:
        """The engine's part of the machine's busy CPU time since the last sample, in [0, 1]."""
        if time.monotonic() - self._refreshed_at > self.REFRESH_S:
            self.refresh()  # a new process's time before it was found is not counted: seconds at most
        used = 0.0
        for pid, process in list(self._processes.items()):
            now = self._cpu_of(process)
            if now is None:  # the process ended: its last interval is lost, a few ms at most
                del self._processes[pid], self._cpu[pid]
                continue
            used += now - self._cpu[pid]
            self._cpu[pid] = now
        busy = self._machine_busy()
        elapsed, self._busy = busy - self._busy, busy
        return min(1.0, used / elapsed) if elapsed > 0 else 0.0

    def _cpu_of(self, process) -> float | None:
        try:
            times = process.cpu_times()
        except self._psutil.Error:
            return None
        return times.user + times.system

    def _machine_busy(self) -> float:
        times = self._psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def engine_meter(accelerator: str, gpu_ids: Iterable[int], *, counters: str = "auto",
                 powercap_root: Path = POWERCAP_ROOT) -> tuple[EnergyMeter, str]:
    """The meter of one engine replica's hardware, and a line saying what it reads.

    Args:
        accelerator: the pool's (``gpu`` or ``cpu``).
        gpu_ids: the GPUs Ray gave the replica (NVML indices).
        counters: ``auto`` (NVML of those GPUs; on a CPU pool, the RAPL packages, shared
            by CPU time) or ``none`` (not measured).
    """
    if counters == "none":
        return EnergyMeter([]), "energy: not measured (the pool's `power.counters` is none)"
    if accelerator == "gpu":
        ids = list(gpu_ids)
        found = nvml_counters(ids) if ids else []
        if not found:
            return EnergyMeter([]), (f"energy: not measured (no NVML energy counter for GPUs {ids}; "
                                     "install nvidia-ml-py where the engine runs)")
        return EnergyMeter(found), f"energy: NVML total energy of GPUs {ids}"
    found = rapl_counters(powercap_root)
    if not found:
        return EnergyMeter([]), f"energy: not measured (no readable RAPL package counter under {powercap_root})"
    names = ", ".join(c.name for c in found)
    return EnergyMeter(found, ProcessCpuShare()), f"energy: RAPL {names}, this engine's part by CPU time"

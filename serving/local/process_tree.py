"""The processes a domain's cluster is made of, found by descent rather than by name, so
that none outlives the cluster.

Ray's dashboard and runtime-env agents are started by the raylet and rename themselves
(``ray::DashboardAgent``); when the head stops they try to report the raylet's death to a
GCS that is already gone, and were seen still running minutes later, holding the metrics
port. vLLM's engine cores are children of Ray workers. Whatever descended from a domain's
process while it ran is stopped when it stops.
"""

from __future__ import annotations

import contextlib

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` now (none if it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_processes(processes: list[psutil.Process], timeout_s: float = 5) -> None:
    """SIGTERM those of ``processes`` that still run (psutil checks each is the same process,
    not a reused pid), then SIGKILL those alive after ``timeout_s``."""
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout_s)


"""Where a process runs on a CPU machine: a pool's whole engine, and a domain's front door,
on their own cores at their own niceness.

vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` pins the model's OpenMP threads, but the replica
process (request handling, detokenizing, streaming) and vLLM's engine-core process are
free to run on any core: under a flood they take CPU from the other pool's engine. The
engine replica therefore pins itself, before it starts vLLM (whose processes inherit the
affinity), to the cores its pool's binding names; and, where the pool sets ``cpu_nice``,
takes that niceness, so that its engine wins its cores from the platform's own processes
(which Ray runs at niceness 15) when both want them.

The engine's settings act on the calling thread (Linux keeps affinity and niceness per
thread); the engine's processes and threads started from it afterwards inherit them. A
front door, a Ray worker whose threads exist before its code runs, sets every thread.
"""

from __future__ import annotations

import logging
import os

from serving.config.cpu_lists import cores_of

logger = logging.getLogger("fabriek.cpu_affinity")

# The pool's cpu_nice, handed to its engine replicas in their environment.
POOL_NICE_ENV = "FABRIEK_POOL_CPU_NICE"


def pin_to_pool_cores() -> set[int] | None:
    """Pins every thread of this process to its pool's cores, if the pool binds any (the
    engine processes it starts inherit them); returns them.

    Every thread, not only this one: the engine replica can be its domain's front door
    (serving.frontdoor.direct_server), and Ray's threads, started before any user code,
    would otherwise run on any core."""
    cores = cores_of(os.environ.get("VLLM_CPU_OMP_THREADS_BIND", ""))
    if cores is None or not hasattr(os, "sched_setaffinity"):
        return None
    # May widen the inherited set: `fabriek serve` starts Ray on its system cores
    # (local.system_cpus), which need not include the pool's.
    return cores if pin_process(cores) else None


def renice_process(niceness: int) -> bool:
    """Sets the niceness of every thread of this process (Linux keeps it per thread, and a
    Ray worker has started its threads before any user code runs); threads started later
    inherit it from their starter. Returns whether all threads took it."""
    try:
        _on_every_thread(lambda thread: os.setpriority(os.PRIO_PROCESS, thread, niceness))
    except OSError as err:  # below the current niceness without CAP_SYS_NICE
        logger.warning("cannot take niceness %d (now %d): %s", niceness,
                       os.getpriority(os.PRIO_PROCESS, 0), err)
        return False
    return True


def take_pool_niceness() -> int | None:
    """Sets the niceness of every thread of this process to its pool's ``cpu_nice``, if the
    pool sets one; returns the niceness taken."""
    wanted = os.environ.get(POOL_NICE_ENV)
    if wanted is None:
        return None
    return int(wanted) if renice_process(int(wanted)) else None


def pin_process(cores: set[int] | frozenset[int]) -> bool:
    """Pins every thread of this process to ``cores``, as ``renice_process`` renices them.
    Returns whether all threads took it."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        _on_every_thread(lambda thread: os.sched_setaffinity(thread, cores))
    except OSError as err:  # a core this machine (or its cgroup) does not have
        logger.warning("cannot pin to cores %s: %s; not pinning", sorted(cores), err)
        return False
    return True


def _on_every_thread(apply) -> None:
    """``apply(thread id)`` for each thread of this process (this one alone without procfs);
    a thread that ends meanwhile is skipped."""
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no procfs (not Linux)
        threads = [0]
    for thread in threads:
        try:
            apply(thread)
        except ProcessLookupError:
            pass


def place_front_door(cores: frozenset[int] | None, cpu_nice: int | None) -> None:
    """Puts this front-door process (ingress or admission controller) on its domain's cores at
    its domain's niceness, so that it competes only with its own domain's engine."""
    if cores is not None:
        pin_process(cores)
    if cpu_nice is not None:
        renice_process(cpu_nice)

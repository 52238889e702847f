"""CPU time by process role on this machine, over a block of work: where a server's cycles go.

CPU seconds are far steadier from one server start to the next than latencies on a small
machine (where the scheduler places the platform's processes next to the engine cores
anew at every start), so a cost that shifts TTFT by less than the start-to-start noise can
still be seen, and named, here.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterator

import psutil

# Ray's process titles (ray::ServeReplica:<app>:<deployment>, ray::ProxyActor, ...) and
# vLLM's (VLLM::EngineCore, VLLM::Worker) name the role; other processes by executable.
_RAY_REPLICA = re.compile(r"^ray::ServeReplica:[^:]+:([^ .]+)")


def role_of(command: list[str], name: str) -> str:
    line = " ".join(command) or name
    if match := _RAY_REPLICA.match(line):
        return f"replica {match.group(1)}"
    if line.startswith(("ray::", "VLLM::")):
        return line.split()[0].split(".")[0]
    executable = (command[0] if command else name).rsplit("/", 1)[-1]
    if "ray/dashboard" in line:
        return "ray dashboard"
    if executable.startswith("python") and len(command) > 1:
        # Python processes by what they run: `python -m vllm.entrypoints...`, `.../log_monitor.py`.
        if "-m" in command[1:-1]:
            return f"python -m {command[command.index('-m', 1) + 1]}"
        if script := next((arg for arg in command[1:] if arg.endswith(".py")), None):
            return f"python {script.rsplit('/', 1)[-1]}"
    return executable


def cpu_seconds_by_pid() -> dict[int, tuple[str, float]]:
    seconds = {}
    for process in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        with contextlib.suppress(psutil.Error, TypeError):
            times = process.info["cpu_times"]
            seconds[process.info["pid"]] = (role_of(process.info["cmdline"] or [], process.info["name"]),
                                            times.user + times.system)
    return seconds


@contextlib.contextmanager
def cpu_by_role(exclude_pids: set[int] = frozenset()) -> Iterator[dict]:
    """Fills the yielded dict, when the block ends, with ``{"wall_s": ..., "roles": {role:
    CPU seconds}}`` for every process that lived through the block (except ``exclude_pids``)."""
    out: dict = {}
    before, started = cpu_seconds_by_pid(), time.perf_counter()
    yield out
    after, wall = cpu_seconds_by_pid(), time.perf_counter() - started
    roles: Counter = Counter()
    for pid, (role, seconds) in after.items():
        if pid in before and pid not in exclude_pids:
            roles[role] += seconds - before[pid][1]
    out.update(wall_s=wall, roles={role: round(s, 3) for role, s in roles.most_common() if s >= 0.01})

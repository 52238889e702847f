"""What `fabriek serve` costs before it serves anything: time to `fabriek ready`, memory of
the whole process tree, and the CPU each domain's idle cluster spends; then whether a
SIGTERM leaves any process behind.

    python loadtests/bench_startup.py --rounds 2 [--baseline-repo DIR]

With ``--baseline-repo`` (another checkout, e.g. ``git worktree add /tmp/base <commit>``),
each round starts the baseline and this checkout in turn (alternated order), each with its
own shipped config and default ports, so the machine's drift hits both alike. Needs a quiet
machine: nothing else may listen on fabriek's default ports.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.process_cpu import role_of  # noqa: E402

READY_TIMEOUT_S = 900
IDLE_S = 30


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cluster_of(process: psutil.Process, launcher: int) -> str:
    """The domain whose `serving.domain_cluster` process the process descends from ("all":
    one shared cluster, as before clusters per domain)."""
    try:
        chain = [process, *process.parents()]
    except psutil.NoSuchProcess:
        return "gone"
    for member in chain:
        if member.pid == launcher:
            break
        try:
            args = member.cmdline()
        except psutil.Error:
            continue
        if "serving.domain_cluster" in args:
            return "domain-" + str(member.pid)
    return "all"


def one_start(repo: Path) -> dict:
    """Start `fabriek serve` from ``repo``, measure, stop it; the figures."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve"], cwd=repo, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in process.stdout:
        lines = [*lines[-40:], line]
        if line.strip() == "fabriek ready":
            break
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise TimeoutError("not ready")
    else:
        raise RuntimeError("fabriek serve ended before it was ready:\n" + "".join(lines))
    ready_s = time.monotonic() - started
    # Keep reading its output, so that it never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    time.sleep(5)  # let start-up work (compilation, first health probes) settle
    tree = _tree(process.pid)
    pss = 0
    for member in tree:
        try:
            pss += member.memory_full_info().pss
        except psutil.Error:
            pass
    before = {}
    for member in tree:
        try:
            times = member.cpu_times()
            before[member.pid] = (member, times.user + times.system)
        except psutil.Error:
            pass
    time.sleep(IDLE_S)
    by_cluster, by_role = Counter(), Counter()
    for pid, (member, was) in before.items():
        try:
            times = member.cpu_times()
            spent = times.user + times.system - was
            by_cluster[_cluster_of(member, process.pid)] += spent
            by_role[role_of(member.cmdline(), member.name())] += spent
        except psutil.Error:
            pass
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=180)
    time.sleep(10)
    leftovers = [m.pid for m in tree if m.is_running() and m.status() != psutil.STATUS_ZOMBIE]
    return {"ready_s": round(ready_s, 1), "pss_gib": round(pss / 2**30, 2),
            "idle_cpu_share_by_cluster": {k: round(v / IDLE_S, 3) for k, v in sorted(by_cluster.items())},
            "idle_cpu_share_top_roles": {k: round(v / IDLE_S, 3) for k, v in by_role.most_common(8)},
            "leftover_pids": leftovers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-repo", type=Path, default=None)
    args = parser.parse_args()
    variants = {"this": REPO} | ({"baseline": args.baseline_repo} if args.baseline_repo else {})
    results = {name: [] for name in variants}
    for round_ in range(args.rounds):
        order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
        for name in order:
            result = one_start(variants[name])
            results[name].append(result)
            print(json.dumps({"round": round_, "variant": name, **result}), flush=True)
    summary = {name: {"ready_s_median": statistics.median(r["ready_s"] for r in rows),
                      "pss_gib_median": statistics.median(r["pss_gib"] for r in rows)}
               for name, rows in results.items()}
    if "baseline" in summary:
        summary["ratio_this_to_baseline"] = {
            "ready_s": round(summary["this"]["ready_s_median"] / summary["baseline"]["ready_s_median"], 2),
            "pss": round(summary["this"]["pss_gib_median"] / summary["baseline"]["pss_gib_median"], 2)}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

"""Isolation under a commercial flood: government TTFT, alone and beside the flood.

A commercial tenant floods its pool at 4x its capacity (closed-loop workers that retry
after a refusal: at once, or after Retry-After with ``--flood-retry retry-after``) while a
government tenant sends steady chat traffic. Measured
for two configs, each in two phases (government alone, then with the flood):
  * isolated: the shipped config (two isolation domains: government and commercial pools,
    each on its own core, each domain's front door on its pool's core);
  * shared: one pool serving both classes (one domain, one front door: no isolation), for contrast.
Reports government TTFT p50/p99 and errors (as its client saw them, and as the ingress
measured them), and how the flood's requests were answered.

Usage (after `make install`; ~15 minutes on a 2-core CPU machine):
    .venv/bin/python loadtests/isolation.py [--phase-s 60] [--out results/isolation.json]
Measured against the target (docs/benchmarks.md, "Isolation domains"): the shipped config,
the flood honouring Retry-After, and both clients, which stand for other machines, given
the CPU they need before the platform:
    .venv/bin/python loadtests/isolation.py --flood-retry retry-after --client-group-nice -10 \
        --government-client-group-nice -15
"""

from __future__ import annotations

import os

CLEAN_ENV = dict(os.environ)  # before vLLM is imported (see bench_vs_vllm.py)

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.bench_vs_vllm import start, stop, wait_ready  # noqa: E402
from loadtests.front_doors import base_url, create_key, free_ports, health_urls, ledger_url, own_files_and_ports  # noqa: E402
from loadtests.isolation_clients import FLOOD_WORKERS, POOL_CAPACITY  # noqa: E402
from loadtests.percentiles import percentile  # noqa: E402
from serving.config import DEFAULT_CONFIG_PATH  # noqa: E402
from serving.config.cpu_lists import cores_of  # noqa: E402
from serving.records.ledger import UsageLedger  # noqa: E402



def isolated_config() -> dict:
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    for pool in config["pools"]:
        pool["admission"] = {"max_running": POOL_CAPACITY, "max_queued": POOL_CAPACITY,
                             "max_queue_wait_s": 5}
    return config


def shared_config() -> dict:
    """One pool (both cores) for both classes: what isolation is measured against."""
    config = isolated_config()
    shared = copy.deepcopy(config["pools"][0])
    shared.update(name="shared", cpu_threads_bind="0-1")
    config["pools"] = [shared]
    for spec in config["classes"].values():
        spec["pools"] = ["shared"]
    return config


def start_client(role: str, base: str, key: str, duration_s: float, args,
                 cores: set[int] | None = None, *options: str, group_nice: int | None = None) -> subprocess.Popen:
    """One of ``loadtests.isolation_clients`` in a process of its own, on ``cores`` if given,
    its session's CPU-time group (autogroup) at ``group_nice`` if given."""
    command = [sys.executable, "-m", "loadtests.isolation_clients", role, "--base", base,
               "--key", key, "--duration-s", str(duration_s), "--interval-s", str(args.interval_s),
               "--timeout-s", str(args.timeout_s), *options]
    # A session of its own: where the kernel groups CPU time by session (autogroup, on here),
    # the government client would otherwise share one CPU-time group with the flood client
    # and the benchmark's own process, and wait behind the flood's share for seconds (a bare
    # sleep loop in that group stalled for 1.8 s). Ray's processes have sessions of their own.
    def placed() -> None:  # in the child, after setsid
        if cores:
            os.sched_setaffinity(0, cores)
        if group_nice is not None:
            Path("/proc/self/autogroup").write_text(str(group_nice))

    return subprocess.Popen(command, cwd=REPO, env=CLEAN_ENV, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=placed)


def result_of(client: subprocess.Popen) -> dict:
    out, _ = client.communicate()
    if client.returncode != 0:
        raise RuntimeError(f"{client.args[3]} client failed with exit code {client.returncode}")
    return json.loads(out.splitlines()[-1])


def phases(bases: dict[str, str], keys: dict[str, str], args, flood_cores: set[int] | None,
           client_cores: set[int] | None) -> dict:
    """Government alone, then beside the flood. The flood runs on the commercial pool's
    cores where it has any: its client-side cost is the commercial tenant's, as it would be
    on a machine of its own, not the government client's."""
    time.sleep(args.settle_s)
    def government() -> dict:
        return result_of(start_client("government", bases["gov-demo"], keys["gov-demo"], args.phase_s, args, client_cores,
                                      group_nice=government_nice))

    government_nice = args.client_group_nice if args.government_client_group_nice is None \
        else args.government_client_group_nice

    result_of(start_client("government", bases["gov-demo"], keys["gov-demo"], 5, args, client_cores))  # warm-up
    alone = government()
    options = ("--honour-retry-after",) if args.flood_retry == "retry-after" else ()
    flooding = start_client("flood", bases["pilot-demo"], keys["pilot-demo"], args.phase_s + 10, args, flood_cores, *options,
                            group_nice=args.client_group_nice)
    time.sleep(5)  # let the flood fill the pool first
    flooded = government()
    return {"alone": summary(alone), "with_flood": summary(flooded), "flood": result_of(flooding),
            "windows": {"alone": alone["window"], "with_flood": flooded["window"]}}


def summary(client: dict) -> dict:
    return {"requests": sum(client["statuses"].values()), "statuses": client["statuses"],
            **percentiles(client["ttfts_ms"], "ttft"),
            "client_loop_lag_max_ms": client["loop_lag_max_ms"]}


def percentiles(values: list[float], name: str) -> dict:
    return {f"{name}_p50_ms": statistics.median(values) if values else None,
            f"{name}_p99_ms": percentile(values, 0.99) if values else None}


def server_side(ledger_url: str, windows: dict[str, list[float]]) -> dict:
    """Government TTFT as the ingress measured it (from the usage ledger), per phase: what
    the client saw minus the front door (HAProxy, the HTTP server) and the client itself."""
    ledger = UsageLedger(ledger_url)
    try:
        records = ledger.records(tenant_id="gov-demo")
    finally:
        ledger.close()
    return {phase: percentiles([r.ttft_ms for r in records
                                if start <= r.started_at <= end and r.ttft_ms is not None], "ttft")
            for phase, (start, end) in windows.items()}


def run(name: str, config: dict, args, logs: Path) -> dict:
    own_files_and_ports(config, logs, name)
    path = logs / f"{name}-platform.yaml"
    path.write_text(yaml.safe_dump(config))
    # Each tenant's key in its own domain's key file; each client at its own domain's door.
    keys = {t: create_key(config, t) for t in ("gov-demo", "pilot-demo")}
    port = free_ports(2)
    bases = {t: base_url(config, t, port) for t in keys}
    log = logs / f"{name}.log"
    process = start([sys.executable, "-m", "serving.cli", "serve", "--config", str(path),
                     "--http-port", str(port), "--dashboard-port", str(free_ports(2))], log)
    try:
        ready_s = sum(wait_ready(url, process, log) for url in health_urls(config, port))
        print(f"{name}: ready in {ready_s:.0f} s", flush=True)
        commercial = next(p for p in config["pools"] if p["name"] in config["classes"]["commercial"]["pools"])
        flood_cores = cores_of(commercial["cpu_threads_bind"]) if commercial.get("cpu_threads_bind") else None
        system = config["local"].get("system_cpus")
        # The government client is the outside world: not on the government engine's cores.
        client_cores = cores_of(system) if system else None
        result = phases(bases, keys, args, flood_cores, client_cores)
    finally:
        stop(process)
    result["ingress_measured"] = server_side(ledger_url(config, "gov-demo"), result.pop("windows"))
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-s", type=float, default=60, help="length of each phase")
    parser.add_argument("--interval-s", type=float, default=0.5, help="government request interval")
    parser.add_argument("--settle-s", type=float, default=15)
    parser.add_argument("--timeout-s", type=float, default=60, help="client timeout per request")
    parser.add_argument("--only", choices=["isolated", "shared"], default=None)
    parser.add_argument("--flood-retry", choices=["at-once", "retry-after"], default="at-once",
                        help="after a refusal, flood clients retry at once (50 ms) or honour Retry-After")
    parser.add_argument("--system-cpus", default=None,
                        help="override local.system_cpus of the isolated config (e.g. 1)")
    parser.add_argument("--commercial-nice", type=int, default=None,
                        help="override the commercial pool's cpu_nice in the isolated config (e.g. 19)")
    parser.add_argument("--commercial-cluster-nice", type=int, default=None,
                        help="override local.cluster_nice of the commercial domain in the isolated config (0: none)")
    parser.add_argument("--front-door-nice", type=int, default=None,
                        help="override ingress.cpu_nice (the ingress and admission controller) of the isolated config")
    parser.add_argument("--client-group-nice", type=int, default=None,
                        help="niceness of both clients' autogroups (e.g. -10: the clients, which stand for "
                             "other machines, get the CPU they need before the platform; needs root)")
    parser.add_argument("--government-client-group-nice", type=int, default=None,
                        help="the government client's autogroup niceness (default: --client-group-nice). Both "
                             "clients stand for machines of their own; on one machine, at equal weight, the "
                             "flood's client (on the commercial core) once per run kept the government client "
                             "waiting ~470 ms for a core (its schedstat): give the measured client priority over "
                             "the flood's client, e.g. -15 beside -10")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "isolation.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logs = args.out.parent / "isolation-logs"
    logs.mkdir(exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "pool_capacity": POOL_CAPACITY, "flood_workers": FLOOD_WORKERS,
               "phase_s": args.phase_s, "government_interval_s": args.interval_s,
               "flood_retry": args.flood_retry, "client_group_nice": args.client_group_nice,
               "government_client_group_nice": args.government_client_group_nice}
    isolated = isolated_config()
    if args.system_cpus is not None:
        isolated["local"]["system_cpus"] = args.system_cpus
    if args.commercial_cluster_nice is not None:
        isolated["local"].setdefault("cluster_nice", {})["commercial"] = args.commercial_cluster_nice
    if args.commercial_nice is not None:
        next(p for p in isolated["pools"] if p["name"] == "commercial")["cpu_nice"] = args.commercial_nice
    if args.front_door_nice is not None:
        isolated.setdefault("ingress", {})["cpu_nice"] = args.front_door_nice
    for name, config in (("isolated", isolated), ("shared", shared_config())):
        if args.only in (None, name):
            results[name] = run(name, config, args, logs)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()

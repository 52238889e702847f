"""Isolation under a commercial flood: government TTFT, alone and beside the flood.

A commercial tenant floods its pool at 4x its capacity (closed-loop workers that retry
after a refusal: at once, or after Retry-After with ``--flood-retry retry-after``) while a
government tenant sends steady chat traffic. Measured
for two configs, each in two phases (government alone, then with the flood):
  * isolated: the shipped config (government and commercial pools, each on its own core);
  * shared: one pool serving both classes (no isolation), for contrast.
Reports government TTFT p50/p99 and errors (as its client saw them, and as the ingress
measured them), and how the flood's requests were answered.

Usage (after `make install`; ~7 minutes on a 2-core CPU machine):
    .venv/bin/python loadtests/isolation.py [--phase-s 60] [--out results/isolation.json]
"""

from __future__ import annotations

import os

CLEAN_ENV = dict(os.environ)  # before vLLM is imported (see bench_vs_vllm.py)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.bench_vs_vllm import free_port, start, stop, wait_ready  # noqa: E402
from routers import KeyFile  # noqa: E402
from serving.ledger import UsageLedger  # noqa: E402
from serving.config import DEFAULT_CONFIG_PATH  # noqa: E402
from serving.cpu_affinity import cores_of  # noqa: E402

MODEL = "smollm2-135m-instruct"
GOV_QUESTION = "What should a citizen know about applying for a passport?"
FLOOD_PROMPT = "Write a long story about a windmill."
# The commercial pool's capacity in this test, and the flood: 4x as many workers.
POOL_CAPACITY = 8
FLOOD_WORKERS = 4 * POOL_CAPACITY


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


async def government(client: httpx.AsyncClient, base: str, duration_s: float, interval_s: float,
                     key: str) -> tuple[list[float], Counter]:
    """Open loop: one short streamed chat every ``interval_s``; TTFT of each."""
    ttfts, statuses, tasks = [], Counter(), []

    async def one():
        body = {"model": MODEL, "messages": [{"role": "user", "content": GOV_QUESTION}],
                "max_tokens": 16, "temperature": 0, "stream": True}
        started = time.perf_counter()
        try:
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as response:
                statuses[response.status_code] += 1
                first = None
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data: {") and '"content"' in line:
                        first = time.perf_counter() - started
                if response.status_code == 200 and first is not None:
                    ttfts.append(first * 1000)
        except httpx.HTTPError as err:
            statuses[type(err).__name__] += 1

    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline:
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(interval_s)
    await asyncio.gather(*tasks)
    return ttfts, statuses


async def flood(client: httpx.AsyncClient, base: str, stop_at: float, key: str,
                honour_retry_after: bool) -> Counter:
    """Closed loop, FLOOD_WORKERS at once, each retrying after a refusal: at once (50 ms, a
    client that ignores the platform), or after the answer's ``Retry-After`` (what the
    official openai SDK does)."""
    statuses = Counter()

    async def worker():
        body = {"model": MODEL, "messages": [{"role": "user", "content": FLOOD_PROMPT}],
                "max_tokens": 64, "stream": True, "ignore_eos": True}
        while time.perf_counter() < stop_at:
            try:
                async with client.stream("POST", f"{base}/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {key}"}) as response:
                    async for _ in response.aiter_bytes():
                        pass
                    statuses[response.status_code] += 1
                if response.status_code != 200:
                    retry_after = response.headers.get("retry-after") if honour_retry_after else None
                    await asyncio.sleep(float(retry_after) if retry_after else 0.05)
            except httpx.HTTPError as err:
                statuses[type(err).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(FLOOD_WORKERS)))
    return statuses


def flood_process(base: str, duration_s: float, key: str, cores: set[int] | None,
                  honour_retry_after: bool, out) -> None:
    """The flood in a process of its own, on the commercial pool's cores when it has any:
    its client-side cost is the commercial tenant's, as it would be on a machine of its
    own, not the government client's."""
    if cores:
        os.sched_setaffinity(0, cores)

    async def run():
        limits = httpx.Limits(max_connections=FLOOD_WORKERS, max_keepalive_connections=FLOOD_WORKERS)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await flood(client, base, time.perf_counter() + duration_s, key, honour_retry_after)
    out.put({str(k): v for k, v in asyncio.run(run()).items()})


async def phases(base: str, keys: dict[str, str], args, flood_cores: set[int] | None) -> dict:
    import multiprocessing

    gc.collect()
    gc.freeze()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=args.timeout_s, limits=limits) as client:
        await asyncio.sleep(args.settle_s)
        await government(client, base, 5, 0.5, keys["gov-demo"])  # warm-up
        alone_window = [time.time()]
        alone, alone_statuses = await government(client, base, args.phase_s, args.interval_s,
                                                 keys["gov-demo"])
        alone_window.append(time.time())
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        flooding = context.Process(target=flood_process, args=(
            base, args.phase_s + 5, keys["pilot-demo"], flood_cores,
            args.flood_retry == "retry-after", results))
        flooding.start()
        await asyncio.sleep(5)  # let the flood fill the pool first
        flood_window = [time.time()]
        flooded, flooded_statuses = await government(client, base, args.phase_s, args.interval_s,
                                                     keys["gov-demo"])
        flood_window.append(time.time())
        flood_statuses = await asyncio.to_thread(results.get)
        flooding.join()
    return {"alone": summary(alone, alone_statuses), "with_flood": summary(flooded, flooded_statuses),
            "flood": flood_statuses, "windows": {"alone": alone_window, "with_flood": flood_window}}


def summary(ttfts: list[float], statuses: Counter) -> dict:
    return {"requests": sum(statuses.values()), "statuses": {str(k): v for k, v in statuses.items()},
            **percentiles(ttfts, "ttft")}


def percentiles(values: list[float], name: str) -> dict:
    ordered = sorted(values)
    return {f"{name}_p50_ms": statistics.median(ordered) if ordered else None,
            f"{name}_p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else None}


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
    config["auth"] = {"key_file": str(logs / f"{name}-keys.json"),
                      "cache_salt_secret_file": str(logs / f"{name}-salt.secret")}
    config["ledger"] = {"url": f"sqlite:///{logs / f'{name}-usage.db'}"}
    config["local"]["metrics_export_port"] = free_port()
    config["serve"].update(haproxy_stats_port=free_port(), haproxy_metrics_port=free_port())
    path = logs / f"{name}-platform.yaml"
    path.write_text(yaml.safe_dump(config))
    key_file = KeyFile(logs / f"{name}-keys.json")
    tenants = {t["id"] for t in config["tenants"]}
    keys = {t: key_file.create(t, tenants)[0] for t in ("gov-demo", "pilot-demo")}
    port = free_port()
    log = logs / f"{name}.log"
    process = start([sys.executable, "-m", "serving.cli", "serve", "--config", str(path),
                     "--http-port", str(port), "--dashboard-port", str(free_port())], log)
    try:
        print(f"{name}: ready in {wait_ready(f'http://127.0.0.1:{port}/health', process, log):.0f} s", flush=True)
        commercial = next(p for p in config["pools"] if p["name"] in config["classes"]["commercial"]["pools"])
        flood_cores = cores_of(commercial["cpu_threads_bind"]) if commercial.get("cpu_threads_bind") else None
        system = config["local"].get("system_cpus")
        if system:
            # The government client is the outside world: not on the government engine's cores.
            os.sched_setaffinity(0, cores_of(system))
        result = asyncio.run(phases(f"http://127.0.0.1:{port}", keys, args, flood_cores))
    finally:
        stop(process)
    result["ingress_measured"] = server_side(config["ledger"]["url"], result.pop("windows"))
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    import logging

    # Importing serving configures logging; a log line per client request would cost the
    # load generator CPU that the servers under test need.
    logging.getLogger("httpx").setLevel(logging.WARNING)
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
    parser.add_argument("--out", type=Path, default=REPO / "results" / "isolation.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logs = args.out.parent / "isolation-logs"
    logs.mkdir(exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "pool_capacity": POOL_CAPACITY, "flood_workers": FLOOD_WORKERS,
               "phase_s": args.phase_s, "government_interval_s": args.interval_s,
               "flood_retry": args.flood_retry}
    isolated = isolated_config()
    if args.system_cpus is not None:
        isolated["local"]["system_cpus"] = args.system_cpus
    for name, config in (("isolated", isolated), ("shared", shared_config())):
        if args.only in (None, name):
            results[name] = run(name, config, args, logs)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()

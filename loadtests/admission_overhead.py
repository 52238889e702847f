"""The per-request cost of shared admission: one AdmissionController call to acquire, one
fire-and-forget call to release, through a Ray Serve handle as the ingress makes them.

Reports the acquire round trip (p50/p99) one request at a time, and how many
acquire+release pairs per second the single controller replica sustains with 64 callers.
``--plain-actor`` runs the same class as a plain Ray actor instead, for comparison.

Usage: .venv/bin/python loadtests/admission_overhead.py [--requests 2000] [--plain-actor]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray  # noqa: E402
from ray import serve  # noqa: E402

from loadtests.percentiles import percentile  # noqa: E402
from routers import Route  # noqa: E402
from routers.fair_queue import PoolLimits  # noqa: E402
from routers.quota import QuotaLimits  # noqa: E402
from serving.admission.admission_controller import AdmissionController  # noqa: E402

ROUTE = Route("commercial", "m")


async def measure(handle, requests: int, callers: int) -> dict:
    for i in range(50):  # warm-up
        await handle.acquire.remote(f"w{i}", "t", 0, ROUTE, 20, 100)
        await handle.release.remote(f"w{i}", 50)
    latencies = []
    for i in range(requests):
        started = time.perf_counter()
        await handle.acquire.remote(f"s{i}", "t", 0, ROUTE, 20, 100)
        latencies.append((time.perf_counter() - started) * 1e3)
        handle.release.remote(f"s{i}", 50)  # fire and forget, as the ingress does
    latencies.sort()
    queue = list(range(requests))

    async def caller():
        while queue:
            i = queue.pop()
            await handle.acquire.remote(f"c{i}", f"t{i % 8}", 0, ROUTE, 20, 100)
            await handle.release.remote(f"c{i}", 50)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    wall = time.perf_counter() - started
    return {"acquire_p50_ms": statistics.median(latencies),
            "acquire_p99_ms": percentile(latencies, 0.99),
            "pairs_per_s_with_callers": requests / wall, "callers": callers, "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--plain-actor", action="store_true", help="a plain Ray actor, not Serve")
    args = parser.parse_args()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    limits = {f"t{i}": QuotaLimits(requests_per_minute=10**9, tokens_per_minute=10**12) for i in range(8)}
    limits["t"] = limits["t0"]
    init_args = (limits, {ROUTE: PoolLimits(1024, 1024, 30)}, {ROUTE: {t: 1.0 for t in limits}})
    if args.plain_actor:
        handle = ray.remote(num_cpus=0)(AdmissionController).remote(*init_args)
    else:
        controller = serve.deployment(AdmissionController, name="AdmissionController",
                                      max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0})
        handle = serve.run(controller.bind(*init_args), name="overhead")
    result = asyncio.run(measure(handle, args.requests, args.callers))
    result["via"] = "plain Ray actor" if args.plain_actor else "Ray Serve handle"
    print(json.dumps(result, indent=1))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

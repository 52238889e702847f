"""The two clients of the isolation scenario, each run as a small process of its own.

They are the outside world: on the facility they run on other machines. Here they share
two cores with the platform, so each is a lean process (asyncio and httpx only, none of the
platform's imports, whose background threads stalled a client's event loop for seconds
when the clients lived in the benchmark's own process), and prints its result as JSON.

    python -m loadtests.isolation_clients government --base URL --key KEY --duration-s 60
    python -m loadtests.isolation_clients flood --base URL --key KEY --duration-s 65 [--honour-retry-after]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter

import httpx

MODEL = "smollm2-135m-instruct"
GOV_QUESTION = "What should a citizen know about applying for a passport?"
FLOOD_PROMPT = "Write a long story about a windmill."
# The commercial pool's capacity in this scenario, and the flood: 4x as many workers.
POOL_CAPACITY = 8
FLOOD_WORKERS = 4 * POOL_CAPACITY


async def watch_loop_lag(stop_at: float, lags: list[float], period_s: float = 0.05) -> None:
    """How late this client's own event loop runs (ms past each ``period_s`` sleep), until
    ``stop_at``: a starved client sends less, and later, than it was asked to."""
    while time.perf_counter() < stop_at:
        slept_at = time.perf_counter()
        await asyncio.sleep(period_s)
        lags.append((time.perf_counter() - slept_at - period_s) * 1000)


def lag_summary(lags: list[float]) -> dict:
    return {"loop_lag_max_ms": max(lags), "loop_lag_p50_ms": statistics.median(lags)}


async def government(base: str, key: str, duration_s: float, interval_s: float,
                     timeout_s: float) -> dict:
    """Open loop: one short streamed chat every ``interval_s``; TTFT of each, and how late
    the client itself was (its event loop's lag), so that a starved client shows."""
    ttfts, statuses, tasks, lags = [], Counter(), [], []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
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

        window = [time.time()]
        deadline = time.perf_counter() + duration_s
        watching = asyncio.create_task(watch_loop_lag(deadline, lags))
        while time.perf_counter() < deadline:
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(interval_s)
        await asyncio.gather(watching, *tasks)
        window.append(time.time())
    return {"ttfts_ms": ttfts, "statuses": {str(k): v for k, v in statuses.items()},
            "window": window, **lag_summary(lags)}


async def flood(base: str, key: str, duration_s: float, honour_retry_after: bool) -> dict:
    """Closed loop, FLOOD_WORKERS at once, each retrying after a refusal: at once (50 ms, a
    client that ignores the platform), or after the answer's ``Retry-After`` (what the
    official openai SDK does)."""
    statuses, lags = Counter(), []
    stop_at = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=FLOOD_WORKERS, max_keepalive_connections=FLOOD_WORKERS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
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

        await asyncio.gather(watch_loop_lag(stop_at, lags), *(worker() for _ in range(FLOOD_WORKERS)))
    return {"statuses": {str(k): v for k, v in statuses.items()}, **lag_summary(lags)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["government", "flood"])
    parser.add_argument("--base", required=True, help="the platform's URL")
    parser.add_argument("--key", required=True, help="the tenant's API key")
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--interval-s", type=float, default=0.5, help="government request interval")
    parser.add_argument("--timeout-s", type=float, default=60, help="government client timeout")
    parser.add_argument("--honour-retry-after", action="store_true")
    args = parser.parse_args()
    if args.role == "government":
        result = asyncio.run(government(args.base, args.key, args.duration_s, args.interval_s, args.timeout_s))
    else:
        result = asyncio.run(flood(args.base, args.key, args.duration_s, args.honour_retry_after))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

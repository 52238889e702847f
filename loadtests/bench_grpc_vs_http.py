"""fabriek's gRPC API against its HTTP API: same server, same tenant, same load, same run.

Starts one `fabriek serve` (shipped config) and drives its first tenant's pool over both
protocols with streaming clients (``grpc.aio`` and ``httpx``), in alternating rounds so
that both see the same machine (other work on it drifts over minutes, not seconds):
  * TTFT p50/p99 at concurrency 1 (sequential streamed chats, time to the first content),
  * output tokens/s at concurrency 16 (closed loop, greedy, the same prompts on both, so
    both generate the same tokens; counted from each answer's usage).

Usage (after `make install`; about 5 minutes on a 2-core CPU machine):
    .venv/bin/python loadtests/bench_grpc_vs_http.py [--rounds 3] [--out results/bench_grpc_vs_http.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.bench_vs_vllm import PROMPTS, free_port, free_ports, one_request, stop  # noqa: E402  (shared with the vLLM bench)
from loadtests.percentiles import percentile  # noqa: E402
from loadtests.front_doors import create_key  # noqa: E402
from serving.config import DEFAULT_CONFIG_PATH, load_config  # noqa: E402
from serving.protos.fabriek.v1 import inference_pb2 as pb  # noqa: E402
from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub  # noqa: E402

CONCURRENCY = 16


class HttpClient:
    """Streamed chat completions over the OpenAI-compatible HTTP API."""

    name = "http"

    def __init__(self, port: int, api_key: str, domain: str):
        self._base = f"http://127.0.0.1:{port}/{domain}"
        self._client = httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {api_key}"},
                                         limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    async def chat(self, prompt: str, max_tokens: int) -> tuple[float, int]:
        """(TTFT seconds, completion tokens) of one streamed chat."""
        return await one_request(self._client, self._base, None, prompt, max_tokens, ignore_eos=False)

    async def close(self) -> None:
        await self._client.aclose()


class GrpcClient:
    """Streamed chats over ``fabriek.v1.InferenceService/ChatStream``, one shared channel."""

    name = "grpc"

    def __init__(self, port: int, api_key: str, domain: str):
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._stub = InferenceServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"), ("application", domain))

    async def chat(self, prompt: str, max_tokens: int) -> tuple[float, int]:
        """(TTFT seconds, completion tokens) of one streamed chat."""
        request = pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content=prompt)],
                                 sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0))
        started = time.perf_counter()
        ttft, tokens = None, 0
        async for message in self._stub.ChatStream(request, metadata=self._metadata, timeout=300):
            if ttft is None and message.content_delta:
                ttft = time.perf_counter() - started
            if message.usage.completion_tokens:
                tokens = message.usage.completion_tokens
        return ttft, tokens

    async def close(self) -> None:
        await self._channel.close()


async def ttfts_ms(client, requests: int, max_tokens: int) -> list[float]:
    return [(await client.chat(PROMPTS[i % len(PROMPTS)], max_tokens))[0] * 1000 for i in range(requests)]


async def throughput(client, requests: int, max_tokens: int) -> tuple[int, float]:
    """(output tokens, wall seconds) of ``requests`` chats from CONCURRENCY closed-loop workers."""
    queue = list(range(requests))
    totals: list[int] = []

    async def worker():
        while queue:
            i = queue.pop()
            totals.append((await client.chat(PROMPTS[i % len(PROMPTS)], max_tokens))[1])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return sum(totals), time.perf_counter() - started


async def measure(http_port: int, grpc_port: int, api_key: str, domain: str, args) -> dict:
    # This process imported Ray and vLLM's models (for the config): keep their heap out of
    # the garbage collector, or a full collection shows up as server TTFT.
    gc.collect()
    gc.freeze()
    clients = [HttpClient(http_port, api_key, domain), GrpcClient(grpc_port, api_key, domain)]
    results = {c.name: {"ttfts_ms": [], "tokens": 0, "wall_s": 0.0} for c in clients}
    try:
        await asyncio.sleep(args.settle_s)
        for client in clients:  # warm-up: connections, lazy initialization on both paths
            for i in range(10):
                await client.chat(PROMPTS[i % len(PROMPTS)], 8)
        for round_ in range(args.rounds):
            # Alternate which protocol goes first, so neither always follows the other.
            for client in clients if round_ % 2 == 0 else clients[::-1]:
                result = results[client.name]
                result["ttfts_ms"] += await ttfts_ms(client, args.requests_c1, args.max_tokens_c1)
                tokens, wall = await throughput(client, args.requests_c16, args.max_tokens_c16)
                result["tokens"] += tokens
                result["wall_s"] += wall
                print(f"round {round_ + 1} {client.name}: TTFT p50 {statistics.median(result['ttfts_ms']):.1f} ms, "
                      f"{tokens / wall:.1f} tok/s", flush=True)
    finally:
        for client in clients:
            await client.close()
    return {name: {"ttft_p50_ms": statistics.median(r["ttfts_ms"]), "ttft_p99_ms": percentile(r["ttfts_ms"], 0.99),
                   "ttft_mean_ms": statistics.fmean(r["ttfts_ms"]), "c1_requests": len(r["ttfts_ms"]),
                   "c16_output_tokens": r["tokens"], "c16_wall_s": r["wall_s"],
                   "c16_output_tokens_per_s": r["tokens"] / r["wall_s"], "ttfts_ms": r["ttfts_ms"]}
            for name, r in results.items()}


def start_fabriek(logs: Path) -> tuple[subprocess.Popen, int, int, str, str]:
    """`fabriek serve` on free ports with key files of its own; returns process, ports, key
    and the key's domain."""
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["auth"].update(key_file=str(logs / "bench-{domain}-keys.json"),
                          cache_salt_secret_file=str(logs / "bench-{domain}-salt.secret"))
    config["serve"].update(haproxy_stats_port=free_ports(2), haproxy_metrics_port=free_ports(2))
    config_path = logs / "bench-platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    tenant = load_config(config_path).tenants[0].id
    api_key, domain = create_key(config, tenant), load_config(config_path).domain_of(tenant).name
    http_port, grpc_port = free_ports(2), free_ports(2)
    log = logs / "fabriek.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path), "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--dashboard-port", str(free_ports(2))],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    started = time.monotonic()
    while time.monotonic() - started < 900:
        if process.poll() is not None:
            sys.exit(f"fabriek exited during start-up; see {log}")
        if "fabriek ready" in log.read_text():
            print(f"fabriek ready in {time.monotonic() - started:.0f} s", flush=True)
            return process, http_port, grpc_port, api_key, domain
        time.sleep(0.5)
    stop(process)
    sys.exit(f"fabriek not ready after 900 s; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per protocol")
    parser.add_argument("--requests-c1", type=int, default=30, help="sequential requests per round (TTFT)")
    parser.add_argument("--max-tokens-c1", type=int, default=8)
    parser.add_argument("--requests-c16", type=int, default=48, help="requests per round at concurrency 16")
    parser.add_argument("--max-tokens-c16", type=int, default=64)
    parser.add_argument("--settle-s", type=float, default=20, help="idle time after start-up before measuring")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_grpc_vs_http.json")
    args = parser.parse_args()
    logs = args.out.parent / "bench_grpc_vs_http_logs"
    logs.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    process, http_port, grpc_port, api_key, domain = start_fabriek(logs)
    try:
        results = asyncio.run(measure(http_port, grpc_port, api_key, domain, args))
    finally:
        stop(process)
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{'':6}{'TTFT p50':>12}{'TTFT p99':>12}{'tok/s @16':>12}")
    for name, r in results.items():
        print(f"{name:6}{r['ttft_p50_ms']:>10.1f}ms{r['ttft_p99_ms']:>10.1f}ms{r['c16_output_tokens_per_s']:>12.1f}")
    http, rpc = results["http"], results["grpc"]
    print(f"grpc vs http: TTFT p50 {rpc['ttft_p50_ms'] - http['ttft_p50_ms']:+.1f} ms, throughput "
          f"{rpc['c16_output_tokens_per_s'] / http['c16_output_tokens_per_s']:.2f}x; "
          f"load average before/after {load_before[0]:.2f}/{os.getloadavg()[0]:.2f}; written to {args.out}")


if __name__ == "__main__":
    main()

"""What a tenant's LoRA adapter costs: the same engine answering its base model and the
adapter, in one run, in alternating blocks.

One `fabriek serve` with the shipped config and a government tenant that owns one adapter
(``tests/lora_adapter.py``'s rank-8 delta on SmolLM2-135M's q/v/o/down projections, all 30
layers), so the government engine runs with vLLM's LoRA on. The client measures base-model
and adapter requests in alternating blocks (A B, B A, ...: the paired method of
``loadtests/tracing_overhead.py``), each a closed loop of ``--concurrency`` clients sending
completions of ``--tokens`` tokens (``ignore_eos``). Reported per block: completion tokens
per second, request latency p50, and CPU seconds per 1,000 tokens by process role
(``loadtests/process_cpu.py``); per pair the ratio adapter / base.

Placement: the government domain (front door and engine) on core 0, as the shipped config
places it; the client on core 1, one event loop and plain httpx.

Usage (after `make model`; about 5 minutes on a 2-core machine):
    .venv/bin/python loadtests/bench_lora.py [--rounds 3] [--out results/bench-lora.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from loadtests.bench_vs_vllm import start, stop, wait_ready  # noqa: E402
from loadtests.front_doors import base_url, create_key, free_port, free_ports, health_urls, own_files_and_ports  # noqa: E402
from loadtests.percentiles import percentile  # noqa: E402
from loadtests.process_cpu import cpu_by_role  # noqa: E402
from serving.config import DEFAULT_CONFIG_PATH  # noqa: E402
from serving.engine.default_model import builtin_model_dir  # noqa: E402
from tests.lora_adapter import make_adapter  # noqa: E402

MODEL_ID = "smollm2-135m-instruct"
TENANT, ADAPTER_ID = "bench-ministry", "bench-ministry-permits"
PROMPT = "Een omgevingsvergunning vraagt u aan bij"


async def block(base: str, headers: dict, model: str, args) -> dict:
    """One closed-loop block: completion tokens per second and request latencies."""
    latencies, tokens = [], 0
    deadline = time.perf_counter() + args.block_s
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    body = {"model": model, "prompt": PROMPT, "max_tokens": args.tokens, "ignore_eos": True, "temperature": 0}
    async with httpx.AsyncClient(timeout=300, limits=limits, headers=headers) as client:
        async def worker() -> None:
            nonlocal tokens
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                answer = await client.post(f"{base}/v1/completions", json=body)
                answer.raise_for_status()
                latencies.append(time.perf_counter() - started)
                tokens += answer.json()["usage"]["completion_tokens"]
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"tokens_per_s": tokens / wall, "tokens": tokens, "wall_s": wall, "requests": len(latencies),
            "latency_p50_ms": statistics.median(latencies) * 1000,
            "latency_p99_ms": percentile(latencies, 0.99) * 1000}


def measure(arm: str, base: str, headers: dict, model: str, args, exclude: set[int]) -> dict:
    with cpu_by_role(exclude) as cpu:
        result = asyncio.run(block(base, headers, model, args))
    per_k = 1000 / max(1, result["tokens"])
    result["cpu_s_per_1k_tokens"] = {role: round(s * per_k, 3) for role, s in cpu["roles"].items()}
    print(f"{arm:8s} {result['tokens_per_s']:7.1f} tokens/s, p50 {result['latency_p50_ms']:.0f} ms", flush=True)
    return {"arm": arm, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="base/adapter pairs (the order alternates)")
    parser.add_argument("--block-s", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--client-cores", default="1")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench-lora.json")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logs = args.out.parent / "bench-lora-logs"
    logs.mkdir(parents=True, exist_ok=True)

    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    own_files_and_ports(config, logs, "bench")
    adapter = make_adapter(builtin_model_dir(MODEL_ID), logs / "adapter")
    config["tenants"].append({"id": TENANT, "class": "government", "models": [MODEL_ID],
                              "adapters": [{"id": ADAPTER_ID, "base": MODEL_ID, "source": str(adapter)}]})
    config_path = logs / "bench-platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_ports(2)
    server = start([sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path),
                    "--http-port", str(port), "--dashboard-port", str(free_ports(2))], logs / "fabriek.log")
    try:
        for url in health_urls(config, port):
            wait_ready(url, server, logs / "fabriek.log")
        os.sched_setaffinity(0, set(map(int, args.client_cores.split(","))))
        target = (base_url(config, TENANT, port), {"Authorization": f"Bearer {create_key(config, TENANT)}"})
        exclude = {os.getpid()}
        settle = argparse.Namespace(**{**vars(args), "block_s": 5.0})
        arms = {"base": MODEL_ID, "adapter": ADAPTER_ID}
        for model in arms.values():  # warm-up, not recorded
            asyncio.run(block(*target, model, settle))
        blocks = []
        for r in range(args.rounds):
            for arm in (["base", "adapter"] if r % 2 == 0 else ["adapter", "base"]):
                blocks.append({"round": r, **measure(arm, *target, arms[arm], args, exclude)})
    finally:
        stop(server)
    pairs = [{arm: next(b for b in blocks if b["round"] == r and b["arm"] == arm) for arm in ("base", "adapter")}
             for r in range(args.rounds)]
    ratios = [p["adapter"]["tokens_per_s"] / p["base"]["tokens_per_s"] for p in pairs]
    engine = "VLLM::EngineCore"
    engine_ratios = [p["adapter"]["cpu_s_per_1k_tokens"].get(engine, 0) /
                     max(1e-9, p["base"]["cpu_s_per_1k_tokens"].get(engine, 0)) for p in pairs]
    summary = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
               "date": time.strftime("%Y-%m-%d"), "model": MODEL_ID, "adapter": "rank 8, q/v/o/down_proj, 30 layers",
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "tokens_per_s_ratios_adapter_over_base": ratios,
               "geomean_ratio": statistics.geometric_mean(ratios),
               "engine_cpu_per_token_ratios_adapter_over_base": engine_ratios, "blocks": blocks}
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"adapter / base tokens per second, per pair: {', '.join(f'{x:.2f}' for x in ratios)}; geometric mean "
          f"{summary['geomean_ratio']:.2f}x; engine CPU per token adapter / base: "
          f"{', '.join(f'{x:.2f}' for x in engine_ratios)}  ->  {args.out}")


if __name__ == "__main__":
    main()

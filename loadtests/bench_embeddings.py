"""Embeddings per second on the default embedding model: fabriek against vLLM's own server,
same model, same engine arguments, same cores, same run.

Both servers run at once; the client measures them in alternating blocks (A B A B ..., the
paired method of ``loadtests/tracing_overhead.py``), so that a machine that drifts between
blocks moves both. Each block is a closed loop of ``--concurrency`` clients, each sending
``--batch`` Dutch texts per request, for ``--block-s`` seconds. Reported per server:
embeddings (texts) per second, request latency p50/p99, and CPU seconds by process role per
1,000 embeddings (``loadtests/process_cpu.py``); and per pair the ratio fabriek / vLLM.

Placement: fabriek's government domain (its front door, the embedding engine) is on core 0,
as the shipped config places it; vLLM's whole server (API process and engine core) is held to
the same core 0; the client runs on core 1 with one event loop and plain httpx (no SDK), so it
takes as little as it can of the machine it shares.

Usage (after `make model`; about 6 minutes on a 2-core machine):
    .venv/bin/python loadtests/bench_embeddings.py [--rounds 3] [--out results/bench-embeddings.json]
"""

from __future__ import annotations

import os

CLEAN_ENV = dict(os.environ)  # servers start with the environment this script was given

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from loadtests.bench_vs_vllm import engine_flags, start, stop, wait_ready  # noqa: E402
from loadtests.front_doors import base_url, create_key, free_port, free_ports, health_urls, own_files_and_ports  # noqa: E402
from loadtests.percentiles import percentile  # noqa: E402
from loadtests.process_cpu import cpu_by_role  # noqa: E402
from serving.config import DEFAULT_CONFIG_PATH, load_config  # noqa: E402
from serving.engine.engines import engine_args_for, resolve_model_source  # noqa: E402

MODEL_ID = "multilingual-e5-small"
TENANT = "gov-demo"
TEXTS = [
    "passage: Een paspoort vraagt u aan bij de gemeente waar u staat ingeschreven.",
    "passage: Voor een omgevingsvergunning dient u een aanvraag in via het Omgevingsloket.",
    "passage: De huurtoeslag hangt af van uw inkomen, uw huur en uw huishouden.",
    "query: Hoe lang is een rijbewijs geldig?",
    "passage: Afval scheiden kan in de containers bij u in de buurt of op de milieustraat.",
    "query: Waar meld ik een kapotte lantaarnpaal?",
    "passage: Parkeervergunningen voor bewoners gelden per straat en per kenteken.",
    "query: Wanneer wordt de WOZ-waarde bepaald?",
]


async def block(base: str, headers: dict, model: str | None, args) -> dict:
    """One closed-loop block: embeddings/s and latencies."""
    latencies, texts = [], 0
    deadline = time.perf_counter() + args.block_s
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:
        async def worker(offset: int) -> None:
            nonlocal texts
            i = offset
            while time.perf_counter() < deadline:
                batch = [TEXTS[(i + j) % len(TEXTS)] for j in range(args.batch)]
                body = {"input": batch, **({"model": model} if model else {})}
                started = time.perf_counter()
                answer = await client.post(f"{base}/v1/embeddings", json=body)
                answer.raise_for_status()
                latencies.append(time.perf_counter() - started)
                texts += len(answer.json()["data"])
                i += args.batch
        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(args.concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"embeddings_per_s": texts / wall, "embeddings": texts, "wall_s": wall, "requests": len(latencies),
            "latency_p50_ms": statistics.median(latencies) * 1000,
            "latency_p99_ms": percentile(latencies, 0.99) * 1000}


def measure(name: str, base: str, headers: dict, model: str | None, args, exclude: set[int]) -> dict:
    with cpu_by_role(exclude) as cpu:
        result = asyncio.run(block(base, headers, model, args))
    per_k = 1000 / max(1, result["embeddings"])
    result["cpu_s_per_1k_embeddings"] = {role: round(s * per_k, 3) for role, s in cpu["roles"].items()}
    print(f"{name:8s} {result['embeddings_per_s']:7.1f} embeddings/s, p50 {result['latency_p50_ms']:.0f} ms",
          flush=True)
    return {"server": name, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="A B pairs (the order alternates)")
    parser.add_argument("--block-s", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="texts per request")
    parser.add_argument("--vllm-cores", default="0", help="cores of vLLM's whole server (fabriek's domain's)")
    parser.add_argument("--client-cores", default="1")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench-embeddings.json")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # vLLM's import logs every request at INFO
    logs = args.out.parent / "bench-embeddings-logs"
    logs.mkdir(parents=True, exist_ok=True)

    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    own_files_and_ports(config, logs, "bench")
    config_path = logs / "bench-platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    loaded = load_config(config_path)
    pool = next(p for p in loaded.pools if MODEL_ID in p.models)
    model = loaded.model(MODEL_ID)
    engine_args = engine_args_for(pool, model)
    engine_args.pop("enable_log_requests", None)
    fabriek_port, vllm_port = free_ports(2), free_port()
    servers = {
        "fabriek": start([sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path),
                          "--http-port", str(fabriek_port), "--dashboard-port", str(free_ports(2))],
                         logs / "fabriek.log"),
        "vllm": start([sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                       "--model", str(resolve_model_source(model)), "--served-model-name", MODEL_ID,
                       "--host", "127.0.0.1", "--port", str(vllm_port), *engine_flags(engine_args)],
                      logs / "vllm.log", env={"VLLM_CPU_OMP_THREADS_BIND": args.vllm_cores},
                      cores=set(map(int, args.vllm_cores.split(",")))),
    }
    try:
        for url in health_urls(config, fabriek_port):
            wait_ready(url, servers["fabriek"], logs / "fabriek.log")
        wait_ready(f"http://127.0.0.1:{vllm_port}/v1/models", servers["vllm"], logs / "vllm.log")
        os.sched_setaffinity(0, set(map(int, args.client_cores.split(","))))
        targets = {"fabriek": (base_url(config, TENANT, fabriek_port),
                               {"Authorization": f"Bearer {create_key(config, TENANT)}"}, None),
                   "vllm": (f"http://127.0.0.1:{vllm_port}", {}, MODEL_ID)}
        exclude = {os.getpid()}
        settle = argparse.Namespace(**{**vars(args), "block_s": 5.0})
        for name, (base, headers, model_id) in targets.items():  # warm-up, not recorded
            asyncio.run(block(base, headers, model_id, settle))
        blocks = []
        for r in range(args.rounds):
            order = ["fabriek", "vllm"] if r % 2 == 0 else ["vllm", "fabriek"]
            for name in order:
                blocks.append({"round": r, **measure(name, *targets[name], args, exclude)})
    finally:
        for process in servers.values():
            stop(process)
    ratios = []
    for r in range(args.rounds):
        fab, vll = (next(b for b in blocks if b["round"] == r and b["server"] == s) for s in ("fabriek", "vllm"))
        ratios.append(fab["embeddings_per_s"] / vll["embeddings_per_s"])
    geomean = statistics.geometric_mean(ratios)
    summary = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
               "date": time.strftime("%Y-%m-%d"), "model": MODEL_ID, "engine_args": engine_args,
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "ratios_fabriek_over_vllm": ratios, "geomean_ratio": geomean, "blocks": blocks}
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"fabriek / vLLM embeddings per second, per pair: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"geometric mean {geomean:.2f}x  ->  {args.out}")


if __name__ == "__main__":
    main()

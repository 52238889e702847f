"""fabriek against vLLM's own OpenAI server: same model, same engine arguments, same run.

Starts each server in turn on this machine, drives both with the same streaming client
and reports, as ratios to vLLM:
  * TTFT p50/p99 at concurrency 1 (sequential streamed chat requests),
  * output tokens/s at concurrency 16 (closed loop, ``ignore_eos`` so every request
    generates exactly ``--max-tokens-c16`` tokens on both servers).

Usage (after `make install`; takes ~7 minutes on a 2-core CPU machine):
    .venv/bin/python loadtests/bench_vs_vllm.py [--config PATH] [--out results/bench_vs_vllm.json]
"""

from __future__ import annotations

import os

# Servers start with the environment this script was started with: importing vLLM and
# torch below changes it (LD_LIBRARY_PATH from OpenCV, torch and vLLM settings).
CLEAN_ENV = dict(os.environ)

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from loadtests.percentiles import percentile  # noqa: E402
from loadtests.front_doors import (base_url, create_key, free_port, free_ports, health_urls,  # noqa: E402,F401
                                   own_files_and_ports)
from serving.config import DEFAULT_CONFIG_PATH, load_config  # noqa: E402
from serving.engine.engines import engine_args_for, resolve_model_source  # noqa: E402

PROMPTS = [
    "What is the capital of the Netherlands?",
    "Explain in one paragraph why dikes matter in the Netherlands.",
    "Write a short poem about cycling in the rain.",
    "List three facts about windmills.",
    "Summarize the plot of a detective story set in Amsterdam.",
    "How does a heat pump work?",
    "Give advice for someone learning Dutch.",
    "What should a citizen know about applying for a passport?",
]


@dataclass
class PhaseResult:
    server: str
    ttft_p50_ms: float
    ttft_p99_ms: float
    ttft_mean_ms: float
    c1_requests: int
    c16_output_tokens_per_s: float
    c16_requests: int
    c16_output_tokens: int
    c16_wall_s: float
    ttfts_ms: list[float]  # in the order they were measured (concurrency 1)


def engine_flags(engine_args: dict) -> list[str]:
    """vLLM CLI flags for engine arguments given as AsyncEngineArgs fields."""
    flags = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None,
          cores: set[int] | None = None) -> subprocess.Popen:
    """A server in a session of its own; on ``cores`` only (all its processes) if given."""
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO, env={**CLEAN_ENV, **(env or {})},
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)


def stop(process: subprocess.Popen) -> None:
    """Stop a server as its operator would: SIGTERM to the server alone, which shuts its
    engines down; then SIGKILL whatever of its session is left. (SIGTERM to the whole group
    at once killed Ray's replicas before they could stop their vLLM engine cores, which then
    ran on as orphans.)"""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 900) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            sys.exit(f"server exited during start-up; see {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit(f"server not ready after {timeout_s} s; see {log}")


async def one_request(client: httpx.AsyncClient, base: str, model: str | None, prompt: str,
                      max_tokens: int, ignore_eos: bool = True,
                      headers: dict[str, str] | None = None) -> tuple[float, int]:
    """Stream one chat completion; return (TTFT seconds, completion tokens).

    ``model`` None leaves it out (fabriek picks the tenant's only model); ``headers`` are
    added to the client's."""
    body = {"messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if model is not None:
        body["model"] = model
    if ignore_eos:
        body["ignore_eos"] = True
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if ttft is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - started
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return ttft, tokens


async def measure(base: str, model: str, args: argparse.Namespace, name: str) -> PhaseResult:
    # This process imported vLLM and torch (for the config and model path): a full garbage
    # collection of that heap stalls the client for ~250 ms and shows up as server TTFT.
    gc.collect()
    gc.freeze()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(timeout=300, limits=limits, headers=headers) as client:
        # Steady state, not start-up: let background start-up work finish, and let the
        # first requests pay for lazy initialization.
        await asyncio.sleep(args.settle_s)
        for i in range(20):
            await one_request(client, base, model, PROMPTS[i % len(PROMPTS)], 8)
        ttfts = []
        for i in range(args.requests_c1):
            ttft, _ = await one_request(client, base, model, PROMPTS[i % len(PROMPTS)], args.max_tokens_c1)
            ttfts.append(ttft * 1000)
        queue = list(range(args.requests_c16))
        totals = []

        async def worker():
            while queue:
                i = queue.pop()
                _, tokens = await one_request(client, base, model, PROMPTS[i % len(PROMPTS)],
                                              args.max_tokens_c16)
                totals.append(tokens)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        wall = time.perf_counter() - started
    in_order = list(ttfts)
    ttfts.sort()
    return PhaseResult(
        server=name, ttft_p50_ms=statistics.median(ttfts),
        ttft_p99_ms=percentile(ttfts, 0.99),
        ttft_mean_ms=statistics.fmean(ttfts), c1_requests=len(ttfts),
        c16_output_tokens_per_s=sum(totals) / wall, c16_requests=len(totals),
        c16_output_tokens=sum(totals), c16_wall_s=wall, ttfts_ms=in_order)


def run_server(name: str, cmd: list[str], base: str, ready_urls: list[str], model_id: str,
               args, logs: Path, env: dict[str, str] | None = None, measure_with=None,
               cores: set[int] | None = None) -> PhaseResult:
    """Start one server, wait until every one of `ready_urls` answers 200, measure it at
    `base` (``measure`` unless ``measure_with`` is given), stop it."""
    log = logs / f"{name}.log"
    process = start(cmd, log, env, cores)
    try:
        ready_s = sum(wait_ready(url, process, log) for url in ready_urls)
        print(f"{name} ready in {ready_s:.0f} s", flush=True)
        return asyncio.run((measure_with or measure)(base, model_id, args, name))
    finally:
        stop(process)


def run_vllm(model_dir: str, model_id: str, engine_args: dict, args, logs: Path,
             env: dict[str, str]) -> PhaseResult:
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", model_id, "--host", "127.0.0.1", "--port", str(port),
           *engine_flags(engine_args)]
    args.api_key = None
    base = f"http://127.0.0.1:{port}"
    # --vllm-cores: the whole server (API server included) on the cores fabriek gives the
    # measured tenant's domain (engine and front door), for a comparison on the same cores.
    cores = set(map(int, args.vllm_cores.split(","))) if args.vllm_cores else None
    return run_server("vllm", cmd, base, [f"{base}/v1/models"], model_id, args, logs, env, cores=cores)


def run_fabriek(model_id: str, args, logs: Path, env: dict[str, str] | None = None,
                name: str = "fabriek", measure_with=None) -> PhaseResult:
    """fabriek with the config's key files moved into `logs` and a key of its first tenant,
    measured at that tenant's domain's front door."""
    config = yaml.safe_load((args.config or DEFAULT_CONFIG_PATH).read_text())
    auth = config.setdefault("auth", {}) or {}
    auth.update(key_file=str(logs / "bench-{domain}-keys.json"),
                cache_salt_secret_file=str(logs / "bench-{domain}-salt.secret"))
    config["auth"] = auth
    config_path = logs / "bench-platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    tenant = load_config(config_path).tenants[0].id
    args.api_key = create_key(config, tenant)
    port = free_ports(2)
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--http-port", str(port),
           "--dashboard-port", str(free_ports(2)), "--config", str(config_path)]
    return run_server(name, cmd, base_url(config, tenant, port), health_urls(config, port), model_id, args,
                      logs, env, measure_with)


def run_ray_stock(model_id: str, args, logs: Path) -> PhaseResult:
    port = free_port()
    cmd = [sys.executable, str(REPO / "loadtests" / "stock_ray_serve_llm.py"), "--http-port", str(port),
           *config_flag(args)]
    # Its /v1/models answers before the engine is up; the warm-up requests wait for it.
    args.api_key = None
    base = f"http://127.0.0.1:{port}"
    return run_server("ray-stock", cmd, base, [f"{base}/v1/models"], model_id, args, logs)


def config_flag(args) -> list[str]:
    return ["--config", str(args.config)] if args.config else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="platform config (default: shipped CPU config)")
    parser.add_argument("--requests-c1", type=int, default=100)
    parser.add_argument("--max-tokens-c1", type=int, default=8)
    parser.add_argument("--requests-c16", type=int, default=96)
    parser.add_argument("--max-tokens-c16", type=int, default=128)
    parser.add_argument("--settle-s", type=float, default=20.0,
                        help="idle time after a server is ready, before warm-up and measurement")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_vs_vllm.json")
    parser.add_argument("--vllm-cores", default=None,
                        help="run vLLM's whole server on these cores (e.g. 0: the government domain's core)")
    parser.add_argument("--only", choices=["vllm", "fabriek", "ray-stock"], default=None,
                        help="measure one server (for iterating); ratios need both")
    args = parser.parse_args()

    config = load_config(args.config)
    # The first tenant's pool: the one fabriek's requests reach, measured against a vLLM
    # server with the same engine arguments and core binding.
    tenant = config.tenants[0]
    pool = next(p for p in config.pools if p.name in config.classes[tenant.tenant_class].pools)
    model = config.model(tenant.models[0])
    model_dir = resolve_model_source(model)
    engine_args = engine_args_for(pool, model)
    vllm_env = {"VLLM_CPU_OMP_THREADS_BIND": pool.cpu_threads_bind} if pool.cpu_threads_bind else {}
    logs = args.out.parent
    logs.mkdir(parents=True, exist_ok=True)

    if args.only:
        runners = {"vllm": lambda: run_vllm(model_dir, model.id, engine_args, args, logs, vllm_env),
                   "fabriek": lambda: run_fabriek(model.id, args, logs),
                   "ray-stock": lambda: run_ray_stock(model.id, args, logs)}
        result = runners[args.only]()
        args.out.write_text(json.dumps(asdict(result), indent=2))
        print(f"{result.server}: TTFT p50 {result.ttft_p50_ms:.1f} ms, p99 {result.ttft_p99_ms:.1f} ms, "
              f"mean {result.ttft_mean_ms:.1f} ms; {result.c16_output_tokens_per_s:.1f} tok/s @16")
        return
    vllm = run_vllm(model_dir, model.id, engine_args, args, logs, vllm_env)
    fabriek = run_fabriek(model.id, args, logs)
    report = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "model": model.id, "engine_args": engine_args,
        "vllm": asdict(vllm), "fabriek": asdict(fabriek),
        "ratios": {
            "ttft_p50_delta_ms": fabriek.ttft_p50_ms - vllm.ttft_p50_ms,
            "ttft_p50_ratio": fabriek.ttft_p50_ms / vllm.ttft_p50_ms,
            "ttft_p99_ratio": fabriek.ttft_p99_ms / vllm.ttft_p99_ms,
            "throughput_c16_ratio": fabriek.c16_output_tokens_per_s / vllm.c16_output_tokens_per_s,
        },
    }
    args.out.write_text(json.dumps(report, indent=2))
    print("\n| server | TTFT p50 (ms) | TTFT p99 (ms) | output tok/s @16 |\n|---|---|---|---|")
    for r in (vllm, fabriek):
        print(f"| {r.server} | {r.ttft_p50_ms:.1f} | {r.ttft_p99_ms:.1f} | {r.c16_output_tokens_per_s:.1f} |")
    ratios = report["ratios"]
    print(f"\nTTFT p50: {ratios['ttft_p50_delta_ms']:+.1f} ms ({ratios['ttft_p50_ratio']:.3f}x); "
          f"p99 {ratios['ttft_p99_ratio']:.3f}x; throughput@16: {ratios['throughput_c16_ratio']:.3f}x")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""What tracing costs: fabriek with OpenTelemetry tracing off against on, same machine, same load.

Three measurements:
  * in-process: fabriek's own span work per request (no server);
  * one server with tracing on, requests interleaved: traced in full (a sampled
    ``traceparent``) against untraced (an unsampled one), one by one at concurrency 1 and
    block by block at concurrency 16. Same processes, same placement: the difference is
    the per-request cost of recording and exporting every span;
  * servers started with tracing off and on, in the order off, on, on, off, ... (so that a
    drift over successive starts falls on both alike): this adds what having tracing
    installed costs, but every start places processes anew, which moves TTFT by several ms
    on its own. ``--starts-only`` runs just these.
With ``--paired``, instead: two servers at once, one with tracing off and one on, each
with its whole platform on a core of its own (one pool, ``local.system_cpus`` and
``cpu_threads_bind`` on that core), measured at the same time with the same load; the cores
swap every round. Whatever the host does during a run (on this machine it moves a server's
TTFT by up to 2x between starts) then falls on both alike, and only their ratio is kept.
With ``--cpu``, instead: servers off and on, in the same order, each measured for the CPU time of
every process by role (idle for a while, then a fixed load), which is steadier between
starts than TTFT is and names where a cost lands (loadtests/process_cpu.py).
"On" exports every span over OTLP/gRPC to a collector in a process of its own, which
receives and counts them: Ray Serve's spans, fabriek's and vLLM's. Platform metrics are
always on. TTFT at concurrency 1, output tokens/s at concurrency 16, as in bench_vs_vllm.py.

Usage (after `make install`; ~14 minutes with 2 rounds on a 2-core CPU machine):
    .venv/bin/python loadtests/tracing_overhead.py [--rounds 2] [--out results/tracing_overhead.json]
    .venv/bin/python loadtests/tracing_overhead.py --cpu [--rounds 2]   # ~12 minutes
    .venv/bin/python loadtests/tracing_overhead.py --paired [--rounds 2] [--settings off,on-no-vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.bench_vs_vllm import (PROMPTS, free_port, free_ports, measure, one_request, own_files_and_ports,  # noqa: E402
                                     run_fabriek, start, stop, wait_ready)  # (clean server env first)
from loadtests.percentiles import percentile  # noqa: E402
from loadtests.process_cpu import cpu_by_role  # noqa: E402
from serving.config import load_config  # noqa: E402
from tests.otlp_collector import OtlpCollector  # noqa: E402


def collector_process(ports, stop, counted) -> None:
    collector = OtlpCollector(keep_spans=False)
    ports.put(collector.port)
    stop.wait()
    counted.put(collector.span_count())
    collector.stop()


@contextlib.contextmanager
def otlp_collector() -> Iterator[dict]:
    """A collector in a process of its own (not in the client's GIL), receiving and counting
    spans. Yields ``{"env": the OTEL variables that send a server's spans there, "pid": its
    pid}``; ``"spans"`` holds the count once the block ends."""
    context = multiprocessing.get_context("spawn")
    ports, stop, counted = context.Queue(), context.Event(), context.Queue()
    sink = context.Process(target=collector_process, args=(ports, stop, counted))
    sink.start()
    collector = {"env": {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports.get()}",
                         "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "pid": sink.pid}
    try:
        yield collector
    finally:
        stop.set()
        collector["spans"] = counted.get()
        sink.join()


# What each setting of a server start exports: nothing; every span (Ray Serve's, fabriek's,
# vLLM's); every span but vLLM's (its exporters stay out of the engine processes); the
# spans of one request in ten, as a facility would sample (the benchmark's requests carry
# no traceparent, so the ratio decides).
SETTINGS = ("off", "on", "on-no-vllm", "on-10pct")


def start_order(rounds: int, settings: tuple[str, ...] = ("off", "on")) -> Iterator[tuple[int, str]]:
    """(round, setting) in the order off, on, on, off, off, on, ... (with three settings
    A, B, C, C, B, A, ...): a drift over successive server starts (the host, its caches, the
    collector's backlog) then weighs on every setting alike instead of always on the one
    started last."""
    for round_ in range(rounds):
        yield from ((round_, s) for s in (settings if round_ % 2 == 0 else reversed(settings)))


def server_env(setting: str, collector: dict) -> dict[str, str]:
    """The environment of a server started with ``setting``."""
    extra = {"off": None, "on": {}, "on-no-vllm": {"FABRIEK_VLLM_TRACES": "off"},
             "on-10pct": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}}[setting]
    return {} if extra is None else {**collector["env"], **extra}


def per_request_span_cost_us(requests: int = 2000) -> dict:
    """fabriek's own span work per request (request and admission spans, attributes, end),
    on an SDK tracer provider with a batching processor that drops what it exports; and
    the same calls with tracing off."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from serving.records import tracing
    from serving.records.request_timings import Timings

    class Dropping(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    def one_request() -> None:
        span = tracing.start_request_span("chat", "smollm2-135m-instruct", "http")
        with tracing.activated(span):
            tracing.mark_admitted(span, request_id="fabriek-0", pool="government", tenant_class="government",
                                  model="smollm2-135m-instruct", max_tokens=64)
            with tracing.activated(tracing.start_admission_span(), end_on_exit=True) as admission:
                tracing.mark_admission(admission, queue_s=0.001)
            tracing.trace_headers()
        tracing.end_request_span(span, status=200, prompt_tokens=30, completion_tokens=64,
                                 timings=Timings(0.001, 0.1, 1.0), replica="government--m#1")

    def timed() -> float:
        started = time.perf_counter()
        for _ in range(requests):
            one_request()
        return (time.perf_counter() - started) / requests * 1e6

    off_us = timed()
    provider = TracerProvider()
    processor = BatchSpanProcessor(Dropping())
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)  # fabriek's tracer follows the global provider
    timed()  # warm-up
    on_us = timed()
    processor.shutdown()
    return {"on_us": on_us, "off_us": off_us, "requests": requests}


def traceparent(sampled: bool) -> dict[str, str]:
    """A new W3C trace context from the client, sampled or not: Ray Serve samples by parent."""
    return {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{'01' if sampled else '00'}"}


@contextlib.asynccontextmanager
async def warmed_up_client(base: str, model: str, args, headers_of=lambda i: None):
    """A client of the server, after ``args.settle_s`` of quiet and 20 warm-up requests
    (the i-th with ``headers_of(i)``)."""
    gc.collect()
    gc.freeze()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=300, limits=limits,
                                 headers={"Authorization": f"Bearer {args.api_key}"}) as client:
        await asyncio.sleep(args.settle_s)
        for i in range(20):
            await one_request(client, base, model, PROMPTS[i % len(PROMPTS)], 8, headers=headers_of(i))
        yield client


async def measure_interleaved(base: str, model: str, args, name: str) -> dict:
    """On one tracing server: requests traced in full (sampled) against requests that are not
    (unsampled), interleaved one by one at concurrency 1 and block by block at concurrency 16,
    so that the difference is the per-request cost of tracing, free of start-to-start drift."""
    async with warmed_up_client(base, model, args, lambda i: traceparent(i % 2 == 0)) as client:
        ttfts = {True: [], False: []}
        for i in range(2 * args.requests_c1):
            sampled = i % 2 == 0
            ttft, _ = await one_request(client, base, model, PROMPTS[(i // 2) % len(PROMPTS)], args.max_tokens_c1,
                                        headers=traceparent(sampled))
            ttfts[sampled].append(ttft * 1000)
        throughput = {True: [], False: []}
        for block in range(4):
            sampled = block % 2 == 0
            queue = list(range(args.requests_c16))
            tokens = []

            async def worker():
                while queue:
                    i = queue.pop()
                    _, n = await one_request(client, base, model, PROMPTS[i % len(PROMPTS)], args.max_tokens_c16,
                                             headers=traceparent(sampled))
                    tokens.append(n)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(16)))
            throughput[sampled].append(sum(tokens) / (time.perf_counter() - started))
    return {name: {"ttft_p50_ms": statistics.median(ttfts[sampled]),
                   "ttft_p99_ms": percentile(ttfts[sampled], 0.99),
                   "tokens_per_s_c16_blocks": throughput[sampled]}
            for name, sampled in (("traced", True), ("untraced", False))}


async def measure_cpu(base: str, model: str, args, name: str) -> dict:
    """CPU seconds by process role: idle for ``args.idle_s``, then 2 blocks of
    ``args.requests_c16`` requests at concurrency 16 (each traced in full when tracing is on)."""
    async with warmed_up_client(base, model, args) as client:
        with cpu_by_role(args.not_measured) as idle:
            await asyncio.sleep(args.idle_s)
        queue = list(range(2 * args.requests_c16))
        tokens = []

        async def worker():
            while queue:
                i = queue.pop()
                tokens.append((await one_request(client, base, model, PROMPTS[i % len(PROMPTS)],
                                                 args.max_tokens_c16))[1])

        with cpu_by_role(args.not_measured) as loaded:
            await asyncio.gather(*(worker() for _ in range(16)))
    return {"idle": idle, "load": loaded, "requests": len(tokens), "output_tokens": sum(tokens)}


def cpu_report(runs: dict[str, list[dict]]) -> dict:
    """Per role: idle cores (CPU s per wall s) and CPU ms per request under load, mean of runs."""
    report = {}
    for setting, results in runs.items():
        roles = {role for r in results for phase in ("idle", "load") for role in r[phase]["roles"]}
        report[setting] = {role: {
            "idle_cores": statistics.fmean(r["idle"]["roles"].get(role, 0) / r["idle"]["wall_s"] for r in results),
            "load_cpu_ms_per_request": statistics.fmean(1e3 * r["load"]["roles"].get(role, 0) / r["requests"]
                                                        for r in results)} for role in roles}
    return report


def main() -> None:
    import logging

    # Importing serving configures logging; a log line per client request costs the client CPU.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs of server runs")
    parser.add_argument("--requests-c1", type=int, default=60)
    parser.add_argument("--max-tokens-c1", type=int, default=8)
    parser.add_argument("--requests-c16", type=int, default=64)
    parser.add_argument("--max-tokens-c16", type=int, default=64)
    parser.add_argument("--settle-s", type=float, default=15.0)
    parser.add_argument("--starts-only", action="store_true",
                        help="only the servers started off and on (skip the one-server interleaved run)")
    parser.add_argument("--settings", default="off,on", type=lambda v: tuple(v.split(",")),
                        help=f"server settings to start, comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--paired", action="store_true",
                        help="two servers at once, one core each: the first setting against the second")
    parser.add_argument("--cpu", action="store_true", help="measure CPU time by process role instead")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window with --cpu")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tracing_overhead.json")
    args = parser.parse_args()
    if unknown := set(args.settings) - set(SETTINGS):
        parser.error(f"unknown settings {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    args.config = None
    model_id = load_config(None).tenants[0].models[0]
    logs = args.out.parent
    logs.mkdir(parents=True, exist_ok=True)

    if args.cpu:
        return main_cpu(args, model_id, logs)
    if args.paired:
        if len(args.settings) != 2:
            parser.error("--paired compares two settings, e.g. --settings off,on")
        return main_paired(args, model_id, logs)
    micro = per_request_span_cost_us()
    print(f"fabriek's spans per request, in-process: {micro['on_us']:.1f} us on, {micro['off_us']:.2f} us off",
          flush=True)
    runs: dict[str, list] = {s: [] for s in args.settings}
    with otlp_collector() as collector:
        interleaved = None
        if not args.starts_only:
            interleaved = run_fabriek(model_id, args, logs, env=collector["env"], name="tracing-interleaved",
                                      measure_with=measure_interleaved)
            traced, untraced = interleaved["traced"], interleaved["untraced"]
            print(f"one server, interleaved: TTFT p50 traced {traced['ttft_p50_ms']:.1f} ms, untraced "
                  f"{untraced['ttft_p50_ms']:.1f} ms; tok/s @16 traced "
                  f"{statistics.fmean(traced['tokens_per_s_c16_blocks']):.1f}, untraced "
                  f"{statistics.fmean(untraced['tokens_per_s_c16_blocks']):.1f}", flush=True)
        order = list(start_order(args.rounds, args.settings))
        for round_, setting in order:
            result = run_fabriek(model_id, args, logs, env=server_env(setting, collector),
                                 name=f"tracing-{setting}-{round_}")
            runs[setting].append(asdict(result))
            print(f"tracing {setting}: TTFT p50 {result.ttft_p50_ms:.1f} ms, "
                  f"{result.c16_output_tokens_per_s:.1f} tok/s @16", flush=True)
    spans = collector["spans"]

    def summary(setting: str) -> dict:
        return {"ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in runs[setting]),
                "ttft_p50_ms_runs": [r["ttft_p50_ms"] for r in runs[setting]],
                "tokens_per_s_c16": statistics.fmean(r["c16_output_tokens_per_s"] for r in runs[setting]),
                "tokens_per_s_c16_runs": [r["c16_output_tokens_per_s"] for r in runs[setting]]}

    summaries = {setting: summary(setting) for setting in args.settings}
    report = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
              "spans_received": spans, "per_request_span_cost": micro, "interleaved": interleaved,
              **summaries, "runs": runs, "start_order": [setting for _, setting in order]}
    off = summaries.get("off")
    for setting, s in summaries.items():
        if off is not None and setting != "off":
            report[f"{setting}_ttft_p50_delta_ms"] = s["ttft_p50_ms"] - off["ttft_p50_ms"]
            report[f"{setting}_throughput_ratio"] = s["tokens_per_s_c16"] / off["tokens_per_s_c16"]
    args.out.write_text(json.dumps(report, indent=2))
    print("\n| tracing | TTFT p50 (ms), per run | output tok/s @16, per run |\n|---|---|---|")
    for setting, s in summaries.items():
        print(f"| {setting} | {' / '.join(f'{v:.1f}' for v in s['ttft_p50_ms_runs'])} | "
              f"{' / '.join(f'{v:.1f}' for v in s['tokens_per_s_c16_runs'])} |")
    for setting in summaries:
        if f"{setting}_throughput_ratio" in report:
            print(f"{setting} against off: TTFT p50 {report[f'{setting}_ttft_p50_delta_ms']:+.2f} ms; "
                  f"throughput x{report[f'{setting}_throughput_ratio']:.3f}")
    print(f"{spans} spans received; written to {args.out}")


def one_core_config(core: int, logs: Path, name: str) -> Path:
    """The shipped config cut down to one pool for every class, the pool's engine and the
    platform's processes all on ``core``, with ports and files of its own (two run at once)."""
    import yaml

    from serving.config import DEFAULT_CONFIG_PATH

    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    pool = next(p for p in config["pools"] if p["name"] == "government")
    pool["cpu_threads_bind"] = str(core)
    config["pools"] = [pool]
    for spec in config["classes"].values():
        spec["pools"] = [pool["name"]]
    # Only the pool's models (the chat model): the embedding pool is gone.
    config["models"] = [m for m in config["models"] if m["id"] in pool["models"]]
    for tenant in config["tenants"]:
        tenant["models"] = [m for m in tenant["models"] if m in pool["models"]]
    config["local"]["system_cpus"] = str(core)
    own_files_and_ports(config, logs, name)
    path = logs / f"{name}-platform.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main_paired(args, model_id: str, logs: Path) -> None:
    import yaml

    from loadtests.front_doors import base_url, create_key, health_urls

    off, on = args.settings
    pairs = []
    with otlp_collector() as collector:
        for round_ in range(args.rounds):
            servers = {}
            try:
                for setting, core in ((off, round_ % 2), (on, 1 - round_ % 2)):
                    name = f"paired-{setting}-{round_}"
                    config = one_core_config(core, logs, name)
                    platform_config = yaml.safe_load(config.read_text())
                    key = create_key(platform_config, "gov-demo")
                    port = free_ports(2)
                    cmd = [sys.executable, "-m", "serving.cli", "serve", "--config", str(config),
                           "--http-port", str(port), "--dashboard-port", str(free_ports(2))]
                    servers[setting] = {"core": core, "port": port, "key": key, "log": logs / f"{name}.log",
                                        "base": base_url(platform_config, "gov-demo", port),
                                        "health": health_urls(platform_config, port)}
                    servers[setting]["process"] = start(cmd, servers[setting]["log"], server_env(setting, collector))
                for setting, server in servers.items():
                    ready_s = sum(wait_ready(url, server["process"], server["log"]) for url in server["health"])
                    print(f"{setting} on core {server['core']}: ready after {ready_s:.0f} s", flush=True)
                results = asyncio.run(measure_both(servers, model_id, args))
            finally:
                # Each one stopped whatever became of the other: a server left running
                # would take a core from every later round.
                for server in servers.values():
                    if "process" in server:
                        with contextlib.suppress(Exception):
                            stop(server["process"])
            pair = {s: {"core": servers[s]["core"], **asdict(r)} for s, r in results.items()}
            pair["ttft_p50_delta_ms"] = pair[on]["ttft_p50_ms"] - pair[off]["ttft_p50_ms"]
            pair["throughput_ratio"] = pair[on]["c16_output_tokens_per_s"] / pair[off]["c16_output_tokens_per_s"]
            pairs.append(pair)
            print(f"round {round_}: {off} on core {servers[off]['core']}: TTFT p50 {pair[off]['ttft_p50_ms']:.1f} ms, "
                  f"{pair[off]['c16_output_tokens_per_s']:.1f} tok/s; {on}: {pair[on]['ttft_p50_ms']:.1f} ms, "
                  f"{pair[on]['c16_output_tokens_per_s']:.1f} tok/s; TTFT {pair['ttft_p50_delta_ms']:+.1f} ms, "
                  f"throughput x{pair['throughput_ratio']:.3f}", flush=True)
    report = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
              "settings": [off, on], "spans_received": collector["spans"], "pairs": pairs,
              "ttft_p50_delta_ms_mean": statistics.fmean(p["ttft_p50_delta_ms"] for p in pairs),
              "throughput_ratio_geomean": statistics.geometric_mean(p["throughput_ratio"] for p in pairs)}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{on} against {off}, servers side by side: TTFT p50 {report['ttft_p50_delta_ms_mean']:+.2f} ms "
          f"(mean of {len(pairs)} pairs), throughput x{report['throughput_ratio_geomean']:.3f} (geometric mean); "
          f"{collector['spans']} spans received; written to {args.out}")


async def measure_both(servers: dict, model_id: str, args) -> dict:
    """Both servers measured at once, each by ``bench_vs_vllm.measure`` with its own key."""
    async def one(setting: str, server: dict):
        own = argparse.Namespace(**{**vars(args), "api_key": server["key"]})
        return await measure(server["base"], model_id, own, setting)

    results = await asyncio.gather(*(one(s, server) for s, server in servers.items()))
    return dict(zip(servers, results))


def main_cpu(args, model_id: str, logs: Path) -> None:
    runs: dict[str, list] = {s: [] for s in args.settings}
    with otlp_collector() as collector:
        # The load generator and the collector stand for the outside world.
        args.not_measured = {os.getpid(), collector["pid"]}
        for round_, setting in start_order(args.rounds, args.settings):
            runs[setting].append(run_fabriek(model_id, args, logs, env=server_env(setting, collector),
                                             name=f"tracing-cpu-{setting}-{round_}",
                                             measure_with=measure_cpu))
            print(f"tracing {setting}: {json.dumps(runs[setting][-1])}", flush=True)
    spans = collector["spans"]
    report = cpu_report(runs)
    args.out.write_text(json.dumps({"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
                                    "spans_received": spans, "by_role": report, "runs": runs}, indent=2))
    settings = " / ".join(report)
    print(f"\n| process | idle cores {settings} | CPU ms per request {settings} |\n|---|---|---|")
    last = report[args.settings[-1]]
    for role in sorted(set().union(*report.values()), key=lambda r: -last.get(r, {}).get("load_cpu_ms_per_request", 0)):
        idle = " / ".join(f"{by_role.get(role, {}).get('idle_cores', 0):.3f}" for by_role in report.values())
        load = " / ".join(f"{by_role.get(role, {}).get('load_cpu_ms_per_request', 0):.1f}" for by_role in report.values())
        print(f"| {role} | {idle} | {load} |")
    print(f"\n{spans} spans received; written to {args.out}")


if __name__ == "__main__":
    main()

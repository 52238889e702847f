"""The platform's per-token ceiling: fabriek against vLLM's own OpenAI server with an engine
that is not the bottleneck.

The engine is the default model's architecture (SmolLM2-135M-Instruct) cut to ``--layers``
layers with random weights (vLLM's ``load_format: dummy``: no weight file is read), so it
streams far faster than the real model and what each server does per token around the
engine (detokenizing, SSE, proxies, Ray) shows. Both servers get the same engine arguments,
from one config: the shipped one cut to one pool (``tracing_overhead.one_core_config``), with
the fast engine and room for 256 streams, written under the run's log directory.

Core layout on a 2-core machine (``--core``, default 1): each server runs whole on that
core, engine and all that serves it, and the load generator alone on the other(s):
  * vLLM: ``vllm.entrypoints.openai.api_server`` started on the core (its API server and the
    engine core it starts inherit the affinity; the OpenMP threads bind there too);
  * fabriek: ``local.system_cpus`` and the pool's ``cpu_threads_bind`` both that core, so
    Ray's processes, HAProxy, the front door, the engine replica and its engine share it;
  * the load generator: a process of its own (this file with ``--client``, which imports
    neither vLLM nor Ray), pinned to the other cores, recording only chunk arrival times
    while streaming and parsing them after each phase.
The server's core therefore holds exactly what each server needs to turn engine steps into
tokens on the wire: the output rate is the engine's steps less what the platform takes from
them, and the platform's CPU seconds say where.

Each server in turn, in the same run (``--rounds`` alternates vLLM, fabriek, vLLM, ...): a
warm-up, then for each of ``--streams`` a closed loop of streamed chat completions
(``ignore_eos``, ``--max-tokens`` each, so both generate the same tokens). Per phase: output
tokens/s, TTFT and inter-token latency (between SSE events carrying content, per token)
p50/p99, and the CPU seconds of every process of the server by role
(``process_cpu.cpu_by_role``) per 1,000 output tokens: vLLM's engine core and workers are the
engine; every other role (vLLM's API server; fabriek's replicas, HAProxy, Ray's processes)
is the platform. Ratios fabriek/vLLM per concurrency, geometric mean over rounds.

Usage (after `make install` and `fabriek models prepare`; ~15 minutes on a 2-core machine):
    .venv/bin/python loadtests/bench_token_path.py [--streams 1,16,64,256] [--rounds 1]
        [--out results/bench_token_path.json] [--plot docs/token-path.png]
    .venv/bin/python loadtests/bench_token_path.py --plot-only results/bench_token_path.json --plot docs/token-path.png
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.percentiles import percentile  # noqa: E402
from loadtests.process_cpu import cpu_by_role  # noqa: E402

# Heavy modules (vLLM, Ray, the config schema) are imported where the orchestrator needs
# them, never by the load generator (``--client``): its CPU competes with nothing then.

TENANT = "gov-demo"
ENGINE_ROLES = ("VLLM::EngineCore", "VLLM::Worker")
# fabriek in its shipped (direct) layout, and in the relay layout (serve.token_path: relay) for
# contrast; fabriek-metered is the direct layout metering energy (a RAPL package counter in a
# powercap tree this script advances at PACKAGE_WATTS: the build machines have none), to weigh
# what energy accounting costs per token.
SERVERS = ("vllm", "fabriek", "fabriek-relay", "fabriek-metered")
PACKAGE_WATTS = 100.0
# A phase during which other processes used more than this is disturbed (``is_disturbed``).
MAX_OUTSIDE_CORES = 0.1


# --- the fast engine's config ---------------------------------------------------------------

def fast_engine_config(logs: Path, *, layers: int = 2, max_num_seqs: int = 256, core: int = 1,
                       name: str = "token-path") -> Path:
    """The shipped config cut to one pool on ``core`` (``tracing_overhead.one_core_config``),
    its model with random weights and ``layers`` layers, room for ``max_num_seqs`` streams;
    written under ``logs``."""
    import yaml

    from loadtests.tracing_overhead import one_core_config

    path = one_core_config(core, logs, name)
    config = yaml.safe_load(path.read_text())
    for model in config["models"]:
        model.setdefault("engine_args", {}).update(load_format="dummy",
                                                   hf_overrides={"num_hidden_layers": layers})
    for pool in config["pools"]:
        pool["engine_args"] = {**pool.get("engine_args", {}), "max_num_seqs": max_num_seqs}
        pool.setdefault("deployment", {})["max_ongoing_requests"] = max(300, max_num_seqs + 44)
        pool["admission"] = {**pool.get("admission", {}), "max_running": max_num_seqs,
                             "max_queued": max_num_seqs}
    ingress = config.setdefault("ingress", {}).setdefault("deployment", {})
    ingress["max_ongoing_requests"] = max(ingress.get("max_ongoing_requests", 0), 4 * max_num_seqs)
    path.write_text(yaml.safe_dump(config))
    return path


def own_copy(config_path: Path, logs: Path, name: str) -> Path:
    """Another fabriek config (``--fabriek-config``) with key files and ports of its own."""
    import yaml

    from loadtests.front_doors import own_files_and_ports

    config = yaml.safe_load(config_path.read_text())
    for section in ("grpc", "local", "serve"):
        config[section] = config.get(section) or {}
    own_files_and_ports(config, logs, name)
    path = logs / f"{name}-platform.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- what one phase measured ----------------------------------------------------------------

def is_engine_role(role: str) -> bool:
    """vLLM's engine core and workers: the engine, not the platform."""
    return role.startswith(ENGINE_ROLES)


def content_events(chunks: list[tuple[float, bytes]]) -> tuple[list[float], int]:
    """From a stream's chunks as they arrived: the arrival times of the SSE events that carry
    content (an event's time is its last chunk's), and the completion tokens of the usage."""
    times, tokens, buffer = [], 0, b""
    for arrived, chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n")
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    tokens = data["usage"].get("completion_tokens") or 0
                choices = data.get("choices")
                if choices and (choices[0].get("delta") or {}).get("content"):
                    times.append(arrived)
    return times, tokens


def phase_stats(records: list[dict], wall_s: float) -> dict:
    """Output tokens/s, TTFT and ITL of one phase from its requests: each ``{"started": t,
    "times": [arrival of each content event], "tokens": completion tokens}`` or ``{"error": ...}``.

    ITL is per token: each gap between content events over the tokens an event carries on
    average in its request (1 when every token has an event of its own). Events that arrive
    in one read make gaps of 0, so where a server sends tokens in bursts its p50 can swing
    between 0 and a step from run to run; the mean (first to last event of a request over
    the tokens between) does not."""
    done = [r for r in records if "error" not in r and r["times"]]
    tokens = sum(r["tokens"] for r in done)
    ttfts = [1e3 * (r["times"][0] - r["started"]) for r in done]
    itls, means = [], []
    for r in done:
        per_event = max(1.0, r["tokens"] / len(r["times"]))
        itls += [1e3 * (b - a) / per_event for a, b in zip(r["times"], r["times"][1:])]
        if len(r["times"]) > 1:
            means.append(1e3 * (r["times"][-1] - r["times"][0]) / (len(r["times"]) - 1) / per_event)
    events = sum(len(r["times"]) for r in done)
    return {"requests": len(done), "errors": len(records) - len(done), "output_tokens": tokens,
            "wall_s": wall_s, "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
            "ttft_p50_ms": statistics.median(ttfts) if ttfts else None,
            "ttft_p99_ms": percentile(ttfts, 0.99) if ttfts else None,
            "itl_p50_ms": statistics.median(itls) if itls else None,
            "itl_p99_ms": percentile(itls, 0.99) if itls else None,
            "itl_mean_ms": statistics.fmean(means) if means else None,
            "tokens_per_event": tokens / events if events else None}


def cpu_per_1k(roles: dict[str, float], output_tokens: int) -> dict:
    """CPU seconds per 1,000 output tokens: the engine's, the platform's (every other role) and
    the platform's by role, largest first."""
    per_1k = {role: 1e3 * s / output_tokens for role, s in roles.items()} if output_tokens else {}
    platform_roles = {r: s for r, s in sorted(per_1k.items(), key=lambda item: -item[1]) if not is_engine_role(r)}
    return {"engine_cpu_s_per_1k": sum(s for r, s in per_1k.items() if is_engine_role(r)),
            "platform_cpu_s_per_1k": sum(platform_roles.values()),
            "platform_by_role_per_1k": platform_roles}


def is_disturbed(phase: dict, max_outside_cores: float = MAX_OUTSIDE_CORES) -> bool:
    """Whether processes that were neither the server nor the load generator used more than
    ``max_outside_cores`` during the phase (on a shared machine: someone else's work)."""
    return (phase.get("outside_cores") or 0.0) > max_outside_cores


def summarize(runs: list[dict], max_outside_cores: float = MAX_OUTSIDE_CORES) -> dict:
    """Per server and streams: the mean over rounds of each number, and the platform's roles.
    Disturbed phases (``is_disturbed``) are left out, unless every round's was."""
    keys = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "itl_mean_ms",
            "engine_cpu_s_per_1k", "platform_cpu_s_per_1k", "client_cores", "outside_cores")
    summary: dict = {}
    for run in runs:
        for phase in run["phases"]:
            summary.setdefault(run["server"], {}).setdefault(str(phase["streams"]), []).append(phase)
    out: dict = {}
    for server, by_streams in summary.items():
        out[server] = {}
        for streams, measured in by_streams.items():
            phases = [p for p in measured if not is_disturbed(p, max_outside_cores)] or measured
            entry = {k: statistics.fmean(p[k] for p in phases) if all(p.get(k) is not None for p in phases)
                     else None for k in keys}
            roles = {r for p in phases for r in p["platform_by_role_per_1k"]}
            entry["platform_by_role_per_1k"] = dict(sorted(
                ((r, statistics.fmean(p["platform_by_role_per_1k"].get(r, 0.0) for p in phases)) for r in roles),
                key=lambda item: -item[1]))
            entry["rounds"] = len(phases)
            entry["disturbed_rounds_left_out"] = len(measured) - len(phases)
            entry["disturbed"] = any(is_disturbed(p, max_outside_cores) for p in phases)
            out[server][streams] = entry
    return out


def paired_ratios(runs: list[dict], max_outside_cores: float = MAX_OUTSIDE_CORES, server: str = "fabriek",
                  baseline: str = "vllm") -> dict:
    """``server``/``baseline`` per streams: each round's ``server`` run against the same round's ``baseline`` run,
    geometric mean over rounds (the machine's drift between rounds falls on both); pairs with
    a disturbed phase are left out, unless every round's pair has one."""
    by_round: dict = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["server"]] = {p["streams"]: p for p in run["phases"]}
    keys = ("tokens_per_s", "platform_cpu_s_per_1k", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
            "itl_mean_ms")
    pairs: dict = {}
    for pair in by_round.values():
        if {baseline, server} - set(pair):
            continue
        for streams, fab in pair[server].items():
            if (vllm := pair[baseline].get(streams)) is not None:
                pairs.setdefault(str(streams), []).append((fab, vllm))
    ratios: dict = {}
    for streams, measured in pairs.items():
        clean = [(f, v) for f, v in measured if not (is_disturbed(f, max_outside_cores) or
                                                    is_disturbed(v, max_outside_cores))] or measured
        out = ratios[streams] = {"pairs": len(clean)}
        for k in keys:
            values = [f[k] / v[k] for f, v in clean if f.get(k) and v.get(k)]
            if values:
                out[k] = statistics.geometric_mean(values)
    return ratios


# --- the load generator (a process of its own) ----------------------------------------------

def server_pids(root: int) -> set[int]:
    """The server's processes: ``root``'s descendants and whatever else runs in its session
    (a daemon that left the tree)."""
    try:
        pids = {root} | {p.pid for p in psutil.Process(root).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == root:
                pids.add(process.pid)
        except OSError:
            pass
    return pids


async def one_stream(client: httpx.AsyncClient, url: str, body: bytes) -> dict:
    """One streamed request: its start and each chunk with its arrival time, nothing parsed."""
    started = time.perf_counter()
    chunks = []
    try:
        async with client.stream("POST", url, content=body) as response:
            if response.status_code != 200:
                return {"started": started, "error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
            async for chunk in response.aiter_raw():
                chunks.append((time.perf_counter(), chunk))
    except httpx.HTTPError as err:
        return {"started": started, "error": repr(err)}
    return {"started": started, "chunks": chunks}


def request_bodies(spec: dict, max_tokens: int) -> list[bytes]:
    bodies = []
    for prompt in spec["prompts"]:
        body = {"model": spec["model"], "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        bodies.append(json.dumps(body).encode())
    return bodies


async def closed_loop(client: httpx.AsyncClient, url: str, bodies: list[bytes], streams: int,
                      requests: int, max_s: float | None) -> tuple[list[dict], float]:
    """``streams`` clients, each sending its next request when its last one ended, until
    ``requests`` were sent (or ``max_s`` passed); every request runs to its end."""
    sent = 0
    results: list[dict] = []
    started = time.perf_counter()
    deadline = started + max_s if max_s else math.inf

    async def worker() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            i, sent = sent, sent + 1
            results.append(await one_stream(client, url, bodies[i % len(bodies)]))

    await asyncio.gather(*(worker() for _ in range(streams)))
    return results, time.perf_counter() - started


async def drive(spec: dict) -> dict:
    """Warm-up, then one closed-loop phase per entry of ``spec["streams"]``, each measured for
    the server's CPU time by role."""
    url = f"{spec['base']}/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    if spec.get("api_key"):
        headers["Authorization"] = f"Bearer {spec['api_key']}"
    most = max(spec["streams"])
    limits = httpx.Limits(max_connections=most + 8, max_keepalive_connections=most + 8)
    me = psutil.Process()
    phases = []
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as client:
        await asyncio.sleep(spec["settle_s"])
        warm = request_bodies(spec, 16)
        await closed_loop(client, url, warm, 1, 4, None)
        await closed_loop(client, url, warm, most, most, None)
        bodies = request_bodies(spec, spec["max_tokens"])
        for streams in spec["streams"]:
            requests = max(spec["min_requests"], streams * spec["requests_per_stream"])
            server = server_pids(spec["server_pid"])
            others = {p.pid for p in psutil.process_iter()} - server
            client_before = sum(me.cpu_times()[:2])
            # The CPU of every other process too (this one's aside): work that was not the
            # benchmark's on the same machine, e.g. someone's test run, shows there.
            with cpu_by_role(server | {me.pid}) as outside, cpu_by_role(others) as cpu:
                results, wall = await closed_loop(client, url, bodies, streams, requests, spec["max_phase_s"])
            client_s = sum(me.cpu_times()[:2]) - client_before
            records = []
            for r in results:
                if "error" in r:
                    records.append(r)
                    continue
                times, tokens = content_events(r["chunks"])
                records.append({"started": r["started"], "times": times, "tokens": tokens})
            stats = phase_stats(records, wall)
            errors = sorted({r["error"] for r in records if "error" in r})[:3]
            phase = {"streams": streams, **stats, **cpu_per_1k(cpu["roles"], stats["output_tokens"]),
                     "cpu_roles_s": cpu["roles"], "cpu_wall_s": cpu["wall_s"], "client_cpu_s": client_s,
                     "client_cores": client_s / wall, "outside_cores": sum(outside["roles"].values()) / wall,
                     "outside_roles_s": outside["roles"], "error_samples": errors}
            phases.append(phase)
            print(f"  {spec['name']} @{streams}: {stats['tokens_per_s']:.0f} tok/s, "
                  f"platform {phase['platform_cpu_s_per_1k']:.2f} CPU s/1k tok, "
                  f"engine {phase['engine_cpu_s_per_1k']:.2f}, client {phase['client_cores']:.2f} cores, "
                  f"other processes {phase['outside_cores']:.2f} cores, "
                  f"{stats['errors']} errors", flush=True)
    return {"phases": phases}


def client_main(spec_path: Path, out_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    out_path.write_text(json.dumps(asyncio.run(drive(spec))))


# --- the orchestrator -----------------------------------------------------------------------

def cores_arg(value: str) -> set[int]:
    from serving.config.cpu_lists import cores_of

    return cores_of(value)


def run_one(server: str, round_: int, args, ctx: dict) -> dict:
    """Start ``server``, drive it from the load generator's cores, stop it."""
    from loadtests.bench_vs_vllm import CLEAN_ENV, PROMPTS, engine_flags, start, stop, wait_ready
    from loadtests.front_doors import base_url, free_port, free_ports, health_urls

    name = f"{server}-{round_}"
    log = ctx["logs"] / f"{name}.log"
    if server == "vllm":
        port = free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", ctx["model_dir"],
               "--served-model-name", ctx["model_id"], "--host", "127.0.0.1", "--port", str(port),
               *engine_flags(ctx["engine_args"])]
        base, ready_urls, api_key = f"http://127.0.0.1:{port}", [f"http://127.0.0.1:{port}/v1/models"], None
        env, cores = ctx["vllm_env"], ctx["vllm_cores"]
    else:
        port = free_ports(2)
        cmd = [sys.executable, "-m", "serving.cli", "serve", "--http-port", str(port),
               "--dashboard-port", str(free_ports(2)), "--config", str(ctx["fabriek_config"])]
        base, ready_urls = base_url(ctx["fabriek_dict"], ctx["tenant"], port), health_urls(ctx["fabriek_dict"], port)
        api_key, env, cores = ctx["api_key"], ctx["fabriek_env"], None  # the config places it
        cmd[cmd.index("--config") + 1] = str(ctx["fabriek_configs"][server])
    started = time.monotonic()
    process = start(cmd, log, env, cores)
    try:
        ready_s = sum(wait_ready(url, process, log) for url in ready_urls)
        print(f"{name} ready in {ready_s:.0f} s", flush=True)
        spec = {"name": name, "base": base, "api_key": api_key, "model": ctx["model_id"],
                "prompts": PROMPTS, "streams": args.streams, "max_tokens": args.max_tokens,
                "requests_per_stream": args.requests_per_stream, "min_requests": args.min_requests,
                "max_phase_s": args.max_phase_s, "settle_s": args.settle_s, "server_pid": process.pid}
        with tempfile.TemporaryDirectory() as tmp:
            spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
            spec_path.write_text(json.dumps(spec))
            client_cores = ctx["client_cores"]
            subprocess.run([sys.executable, __file__, "--client", str(spec_path), "--client-out", str(out_path)],
                           check=True, cwd=REPO, env=CLEAN_ENV,
                           preexec_fn=lambda: os.sched_setaffinity(0, client_cores))
            result = json.loads(out_path.read_text())
    finally:
        stop(process)
    return {"server": server, "round": round_, "ready_s": ready_s,
            "run_s": time.monotonic() - started, **result}


def print_table(report: dict) -> None:
    print("\n| server | streams | tok/s | TTFT p50/p99 (ms) | ITL p50/p99/mean (ms) | engine CPU s/1k | "
          "platform CPU s/1k | platform's top roles (CPU s/1k) |\n|---|---|---|---|---|---|---|---|")

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    for server, by_streams in report["summary"].items():
        for streams, s in sorted(by_streams.items(), key=lambda item: int(item[0])):
            top = ", ".join(f"{r} {v:.2f}" for r, v in list(s["platform_by_role_per_1k"].items())[:4])
            mark = " (disturbed)" if s.get("disturbed") else ""
            print(f"| {server} | {streams}{mark} | {s['tokens_per_s']:.0f} | {ms(s['ttft_p50_ms'])} / "
                  f"{ms(s['ttft_p99_ms'])} | {ms(s['itl_p50_ms'])} / {ms(s['itl_p99_ms'])} / {ms(s.get('itl_mean_ms'))} | "
                  f"{s['engine_cpu_s_per_1k']:.2f} | "
                  f"{s['platform_cpu_s_per_1k']:.2f} | {top} |")
    for key, server, baseline in (("ratios", "fabriek", "vLLM"), ("ratios_relay", "fabriek-relay", "vLLM"),
                                  ("ratios_metered", "fabriek-metered", "fabriek")):
        if not report.get(key):
            continue
        print(f"\n| streams | pairs | tok/s {server}/{baseline} | platform CPU/1k {server}/{baseline} | TTFT p50 | "
              "ITL mean |"
              "\n|---|---|---|---|---|---|")
        for streams, r in sorted(report[key].items(), key=lambda item: int(item[0])):
            print(f"| {streams} | {r.get('pairs', '?')} | {r.get('tokens_per_s', math.nan):.3f} | "
                  f"{r.get('platform_cpu_s_per_1k', math.nan):.3f} | {r.get('ttft_p50_ms', math.nan):.3f} | "
                  f"{r.get('itl_mean_ms', math.nan):.3f} |")


def plot(report: dict, path: Path, top_roles: int = 3) -> None:
    """Two panels against streams (log2): output tokens/s (fabriek's points marked with its
    ratio to vLLM), and platform CPU s per 1k tokens (log scale; fabriek's largest roles
    dashed beneath its total)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"vllm": "tab:blue", "fabriek": "tab:orange", "fabriek-relay": "tab:gray", "fabriek-metered": "tab:green"}
    role_colors = ("#a63603", "#e6550d", "#fd8d3c", "#fdae6b")
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(11, 4.4))
    ratios = report.get("ratios") or {}
    every = set()
    for server, by_streams in report["summary"].items():
        streams = sorted(by_streams, key=int)
        xs = [int(s) for s in streams]
        every.update(xs)
        label = {"vllm": "vLLM OpenAI server", "fabriek": "fabriek (direct)"}.get(server, server)
        color = colors.get(server)
        ys = [by_streams[s]["tokens_per_s"] for s in streams]
        rate.plot(xs, ys, "o-", color=color, label=label)
        cpu.plot(xs, [by_streams[s]["platform_cpu_s_per_1k"] for s in streams], "o-", color=color,
                 label=f"{label}: platform total")
        if server == "fabriek":
            for x, y, s in zip(xs, ys, streams):
                if "tokens_per_s" in ratios.get(s, {}):
                    rate.annotate(f"{ratios[s]['tokens_per_s']:.2f}x", (x, y), textcoords="offset points",
                                  xytext=(0, 7), ha="center", fontsize=8, color=color)
            totals: dict[str, float] = {}
            for s in streams:
                for role, v in by_streams[s]["platform_by_role_per_1k"].items():
                    totals[role] = totals.get(role, 0.0) + v
            for role, shade in zip(sorted(totals, key=lambda r: -totals[r])[:top_roles], role_colors):
                cpu.plot(xs, [by_streams[s]["platform_by_role_per_1k"].get(role, 0.0) or None for s in streams],
                         "--", color=shade, linewidth=1, marker=".", label=f"fabriek: {role}")
    rate.set_ylim(bottom=0)
    cpu.set_yscale("log")
    for axis, title, unit in ((rate, "Output tokens/s", "tokens/s"),
                              (cpu, "Platform CPU per 1,000 output tokens", "CPU s (log)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted(every), [str(x) for x in sorted(every)])
        axis.set_xlabel("concurrent streams")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3, which="both")
        axis.legend(fontsize=7)
    args = report.get("args", {})
    fig.suptitle(f"Token path: {args.get('layers', '?')}-layer dummy SmolLM2 engine, {args.get('max_tokens', '?')} "
                 f"tokens per request, each server on one core, client on another "
                 f"({report.get('machine', {}).get('cpu_count', '?')} CPUs)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,16,64,256", type=lambda v: [int(s) for s in v.split(",")])
    parser.add_argument("--layers", type=int, default=2, help="layers of the dummy engine")
    parser.add_argument("--max-tokens", type=int, default=128, help="output tokens of every request")
    parser.add_argument("--requests-per-stream", type=int, default=2,
                        help="requests of a phase per stream (at least --min-requests)")
    parser.add_argument("--min-requests", type=int, default=12)
    parser.add_argument("--max-phase-s", type=float, default=None,
                        help="send no new request of a phase after this many seconds")
    parser.add_argument("--settle-s", type=float, default=10.0, help="idle after ready, before the warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="vLLM, fabriek pairs, in that order")
    parser.add_argument("--core", type=int, default=1, help="the server's core in the generated config")
    parser.add_argument("--vllm-cores", default=None,
                        help="vLLM's cores (default: the fabriek config's pool cores and system cores)")
    parser.add_argument("--client-cores", default=None, help="the load generator's (default: all others)")
    parser.add_argument("--max-outside-cores", type=float, default=MAX_OUTSIDE_CORES,
                        help="leave out of the summary and ratios phases during which other processes used more")
    parser.add_argument("--only", choices=SERVERS, default=None)
    parser.add_argument("--servers", default=",".join(SERVERS), type=lambda v: v.split(","),
                        help=f"which servers each round runs, in order (of {', '.join(SERVERS)})")
    parser.add_argument("--fabriek-config", type=Path, default=None,
                        help="another fabriek layout (default: the generated fast-engine config)")
    parser.add_argument("--fabriek-env", action="append", default=[], metavar="K=V",
                        help="environment of the fabriek server (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_token_path.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of tokens/s and platform CPU against streams")
    parser.add_argument("--plot-only", type=Path, default=None, metavar="RESULTS_JSON",
                        help="only draw --plot from an earlier run's JSON")
    parser.add_argument("--client", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--client-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plot_only and not args.plot:
        parser.error("--plot-only needs --plot PATH.png")
    if unknown := set(args.servers) - set(SERVERS):
        parser.error(f"--servers: unknown {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    if bad := [kv for kv in args.fabriek_env if "=" not in kv]:
        parser.error(f"--fabriek-env takes K=V, not {bad}")
    return args


def context(args) -> dict:
    """Everything both servers are started from: one fabriek config, and vLLM's engine
    arguments, environment and cores derived from it."""
    import yaml

    # First: it keeps the environment this script started with, for the servers (CLEAN_ENV).
    from loadtests import bench_vs_vllm  # noqa: F401
    from loadtests.front_doors import create_key
    from serving.config import load_config
    from serving.config.cpu_lists import cores_of
    from serving.engine.engines import engine_args_for, resolve_model_source

    logs = args.out.parent / (args.out.stem + "-logs")
    logs.mkdir(parents=True, exist_ok=True)
    if args.fabriek_config:
        config_path = own_copy(args.fabriek_config, logs, "token-path")
    else:
        config_path = fast_engine_config(logs, layers=args.layers, max_num_seqs=max(256, *args.streams),
                                         core=args.core)
    config = load_config(config_path)
    tenant = next((t for t in config.tenants if t.id == TENANT), config.tenants[0])
    pool = next(p for p in config.pools if p.name in config.classes[tenant.tenant_class].pools)
    model = config.model(tenant.models[0])
    server_cores = (cores_of(pool.cpu_threads_bind) or set()) | \
        (cores_of(config.local.system_cpus) if config.local.system_cpus else set())
    vllm_cores = cores_arg(args.vllm_cores) if args.vllm_cores else (server_cores or None)
    client_cores = cores_arg(args.client_cores) if args.client_cores else \
        (set(range(os.cpu_count())) - (server_cores | (vllm_cores or set()))) or set(range(os.cpu_count()))
    path_env = {"PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    vllm_env = {**path_env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if pool.cpu_threads_bind:
        vllm_env["VLLM_CPU_OMP_THREADS_BIND"] = pool.cpu_threads_bind
    fabriek_dict = yaml.safe_load(config_path.read_text())
    # The same config on the relay layout: an ingress deployment relays the engine's streams.
    relay = {**fabriek_dict, "serve": {**(fabriek_dict.get("serve") or {}), "token_path": "relay"}}
    relay_path = logs / f"{config_path.stem}-relay.yaml"
    relay_path.write_text(yaml.safe_dump(relay))
    # The same config metering energy, from a package counter advanced for the whole run (so
    # that its writes disturb every server alike).
    metered = {**fabriek_dict, "energy": {**(fabriek_dict.get("energy") or {}),
                                          "powercap_root": str(advancing_package(logs / "powercap"))}}
    metered_path = logs / f"{config_path.stem}-metered.yaml"
    metered_path.write_text(yaml.safe_dump(metered))
    return {"logs": logs, "fabriek_config": config_path, "fabriek_dict": fabriek_dict,
            "fabriek_configs": {"fabriek": config_path, "fabriek-relay": relay_path,
                                "fabriek-metered": metered_path},
            "api_key": create_key(fabriek_dict, tenant.id), "tenant": tenant.id,
            "model_id": model.id, "model_dir": resolve_model_source(model),
            "engine_args": engine_args_for(pool, model), "vllm_env": vllm_env, "vllm_cores": vllm_cores,
            "fabriek_env": {**path_env, **dict(kv.split("=", 1) for kv in args.fabriek_env)},
            "server_cores": sorted(server_cores), "client_cores": client_cores}


def advancing_package(root: Path) -> Path:
    """A powercap tree with one RAPL package whose counter a thread advances at PACKAGE_WATTS."""
    import threading

    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    began = time.monotonic()

    def write() -> None:
        (zone / "energy_uj.tmp").write_text(f"{int((time.monotonic() - began) * PACKAGE_WATTS * 1e6) % 262143328850}\n")
        os.replace(zone / "energy_uj.tmp", zone / "energy_uj")

    def run() -> None:
        while True:
            write()
            time.sleep(0.01)

    write()
    threading.Thread(target=run, daemon=True).start()
    return root


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.client:
        return client_main(args.client, args.client_out)
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), args.plot)
        print(f"plotted {args.plot_only} into {args.plot}")
        return
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    began = time.monotonic()
    ctx = context(args)
    order = [(r, s) for r in range(args.rounds) for s in args.servers if args.only in (None, s)]
    runs = []
    for round_, server in order:
        runs.append(run_one(server, round_, args, ctx))
    report = {
        "machine": {"platform": platform.platform(), "node": platform.node(), "machine": platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("client", "client_out", "plot_only")},
        "layout": {"server_cores": ctx["server_cores"], "vllm_cores": sorted(ctx["vllm_cores"] or []),
                   "client_cores": sorted(ctx["client_cores"])},
        "fabriek_config": str(ctx["fabriek_config"]), "model": ctx["model_id"],
        "engine_args": ctx["engine_args"], "fabriek_env": ctx["fabriek_env"],
        "runs": runs, "summary": summarize(runs, args.max_outside_cores),
        "ratios": paired_ratios(runs, args.max_outside_cores),
        "ratios_relay": paired_ratios(runs, args.max_outside_cores, "fabriek-relay"),
        "ratios_metered": paired_ratios(runs, args.max_outside_cores, "fabriek-metered", baseline="fabriek"),
        "total_s": time.monotonic() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    if args.plot:
        plot(report, args.plot)
    print(f"\n{report['total_s'] / 60:.1f} minutes; written to {args.out}" + (f", plot {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()

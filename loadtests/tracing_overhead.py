"""What tracing costs: fabriek with OpenTelemetry tracing off against on, same machine, same load.

"On" samples every request (the worst case) and exports every span over OTLP/gRPC to a
collector in this process, which receives and decodes them: Ray Serve's spans, fabriek's and
vLLM's. Platform metrics are always on, in both. Runs alternate (off, on, off, on, ...) so
that drift of the machine shows up as spread within a setting rather than as a difference.
Per run: TTFT at concurrency 1 and output tokens/s at concurrency 16, as in bench_vs_vllm.py.

Usage (after `make install`; ~12 minutes for 2 rounds on a 2-core CPU machine):
    .venv/bin/python loadtests/tracing_overhead.py [--rounds 2] [--out results/tracing_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.bench_vs_vllm import run_fabriek  # noqa: E402  (sets the clean server environment first)
from serving.config import load_config  # noqa: E402
from tests.otlp_collector import OtlpCollector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs of server runs")
    parser.add_argument("--requests-c1", type=int, default=60)
    parser.add_argument("--max-tokens-c1", type=int, default=8)
    parser.add_argument("--requests-c16", type=int, default=64)
    parser.add_argument("--max-tokens-c16", type=int, default=64)
    parser.add_argument("--settle-s", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tracing_overhead.json")
    args = parser.parse_args()
    args.config = None
    model_id = load_config(None).tenants[0].models[0]
    logs = args.out.parent
    logs.mkdir(parents=True, exist_ok=True)

    collector = OtlpCollector()
    tracing_on = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    runs = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for setting, env in (("off", {}), ("on", tracing_on)):
            result = run_fabriek(model_id, args, logs, env=env, name=f"tracing-{setting}-{round_}")
            runs[setting].append(asdict(result))
            print(f"tracing {setting}: TTFT p50 {result.ttft_p50_ms:.1f} ms, "
                  f"{result.c16_output_tokens_per_s:.1f} tok/s @16", flush=True)
    spans = collector.span_count()
    collector.stop()

    def summary(setting: str) -> dict:
        return {"ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in runs[setting]),
                "ttft_p50_ms_runs": [r["ttft_p50_ms"] for r in runs[setting]],
                "tokens_per_s_c16": statistics.fmean(r["c16_output_tokens_per_s"] for r in runs[setting]),
                "tokens_per_s_c16_runs": [r["c16_output_tokens_per_s"] for r in runs[setting]]}

    off, on = summary("off"), summary("on")
    report = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
              "spans_received": spans, "off": off, "on": on,
              "ttft_p50_delta_ms": on["ttft_p50_ms"] - off["ttft_p50_ms"],
              "throughput_ratio": on["tokens_per_s_c16"] / off["tokens_per_s_c16"], "runs": runs}
    args.out.write_text(json.dumps(report, indent=2))
    print("\n| tracing | TTFT p50 (ms), per run | output tok/s @16, per run |\n|---|---|---|")
    for setting, s in (("off", off), ("on", on)):
        print(f"| {setting} | {' / '.join(f'{v:.1f}' for v in s['ttft_p50_ms_runs'])} | "
              f"{' / '.join(f'{v:.1f}' for v in s['tokens_per_s_c16_runs'])} |")
    print(f"\nTTFT p50 {report['ttft_p50_delta_ms']:+.2f} ms; throughput x{report['throughput_ratio']:.3f}; "
          f"{spans} spans received; written to {args.out}")


if __name__ == "__main__":
    main()

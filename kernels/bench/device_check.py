"""The GPU device check: correctness in bf16 and the decode/prefill benchmarks, in one run.

    python -m kernels.bench.vendor_vllm_kernel .vendor      # here, where vLLM is installed
    PYTHONPATH=.vendor python -m kernels.bench.device_check --out results/   # on the GPU

Runs the kernel test grid compiled for the GPU (bf16 included), checks vLLM's Triton
kernel against ours, then benchmarks both and torch SDPA. Writes
``kernels-device-check.json`` and a markdown table into ``--out``. Takes about five
minutes on an H100/H200.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import triton

from kernels.bench.bench_attention import (as_rows, bench_decode, bench_prefill,
                                           check_vllm_kernel_agrees, peak_bandwidth)


def describe_device() -> dict:
    props = torch.cuda.get_device_properties(0)
    vendored = Path(importlib.util.find_spec("vllm").origin).parents[1] / "VERSION" \
        if importlib.util.find_spec("vllm") else None
    return {"gpu": props.name, "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(),
            "vllm_kernel_from": vendored.read_text().strip() if vendored and vendored.exists() else None,
            "peak_hbm_tb_per_s": (peak_bandwidth() or 0) / 1e12 or None}


def copy_bandwidth_tb_per_s() -> float:
    """A device-to-device copy, counting bytes read and written: the practical ceiling."""
    src = torch.empty(2**30, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e12


def run_test_grid(selection: list[str], log_path: Path) -> dict:
    """The CPU test grid, compiled for the GPU, plus the GPU-only bf16 and int64 tests."""
    start = time.monotonic()
    workers = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    proc = subprocess.run([sys.executable, "-m", "pytest", *selection, "-q", "-p",
                           "no:cacheprovider", "--ignore=tests/kernels/test_vllm_backend.py",
                           *workers], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    log_path.write_text(proc.stdout + proc.stderr)  # the failures' tracebacks, whole
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    summary = [l for l in lines if " passed" in l or " failed" in l or " error" in l]
    return {"passed": proc.returncode == 0, "summary": summary[-1] if summary else "",
            "seconds": round(time.monotonic() - start, 1),
            "failures": [l for l in lines if l.startswith("FAILED")][:20]}


def markdown(results: list[dict]) -> str:
    rows = ["| phase | case | kernel | config | ms | TB/s | % of peak BW | TFLOP/s |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        pct = f"{100 * r['fraction_of_peak_bw']:.0f}%" if r["fraction_of_peak_bw"] else ""
        ms = f"{r['ms']:.3f}" if r["error"] is None else f"failed: {r['error'][:80]}"
        rows.append(f"| {r['phase']} | {r['case']} | {r['kernel']} | {r['config']} | {ms} "
                    f"| {r['tb_per_s'] or ''} | {pct} | {r['tflops'] or ''} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--tests", default="tests/kernels",
                        help="pytest selection compiled for the GPU first ('' to skip)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("device check: no CUDA GPU here (this check is for the GPU machines)")
    args.out.mkdir(parents=True, exist_ok=True)
    with_vllm = importlib.util.find_spec("vllm") is not None
    report = {"device": describe_device(), "copy_tb_per_s": round(copy_bandwidth_tb_per_s(), 3)}
    print(json.dumps(report, indent=1), flush=True)
    if args.tests:
        report["tests"] = run_test_grid(args.tests.split(), args.out / "kernels-tests.log")
        print("tests:", json.dumps(report["tests"], indent=1), flush=True)
    device = torch.device("cuda")
    if with_vllm:
        try:
            report["max_abs_diff_vs_vllm_kernel"] = check_vllm_kernel_agrees(device)
        except Exception as exc:  # noqa: BLE001 - report it and benchmark without vLLM
            report["max_abs_diff_vs_vllm_kernel"] = f"{type(exc).__name__}: {exc}"[:300]
            with_vllm = False
        print("max |ours - vLLM's| on a mixed bf16 batch:", report["max_abs_diff_vs_vllm_kernel"], flush=True)
    results = []
    for name, bench in (("decode", bench_decode), ("prefill", bench_prefill)):
        start = time.monotonic()
        rows = as_rows(bench(device, with_vllm))
        print(markdown(rows), f"\n({name}: {time.monotonic() - start:.0f} s)", flush=True)
        results += rows
    report["results"] = results
    (args.out / "kernels-device-check.json").write_text(json.dumps(report, indent=1))
    (args.out / "kernels-device-check.md").write_text(markdown(results) + "\n")


if __name__ == "__main__":
    main()

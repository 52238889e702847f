"""Decode and prefill micro-benchmarks: our kernels, torch SDPA and vLLM's Triton kernel.

Decode is memory-bound, so it reports achieved bandwidth (bytes of K and V read) against
the card's peak; prefill is compute-bound, so it reports TFLOP/s from the FLOP count of
the two matmuls over the causally visible query-key pairs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import triton.testing

from kernels import LaunchConfig, paged_attention
from kernels.bench.paged_batch import PagedBatch, make_batch

# Nominal HBM bandwidth in bytes/s, from the vendors' data sheets.
PEAK_HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}
# A Llama-3-8B-like attention layer (GQA 4:1, head size 128), bf16, blocks of 16.
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 32, 8, 128, 16
DECODE_CASES = [(128, 2048), (64, 8192), (16, 32768), (4, 32768)]  # (batch, context)
PREFILL_CASES = [(1, 8192), (4, 4096), (16, 1024)]  # (sequences, new tokens each)
# The first config of each list is the launcher's default; the rest are the sweep.
DECODE_CONFIGS = [LaunchConfig(16, 128, 4, 3), LaunchConfig(16, 64, 4, 3),
                  LaunchConfig(16, 256, 4, 2), LaunchConfig(16, 128, 4, 4)]
PREFILL_CONFIGS = [LaunchConfig(128, 128, 8, 2), LaunchConfig(128, 128, 8, 3),
                   LaunchConfig(128, 128, 4, 2), LaunchConfig(128, 64, 8, 4),
                   LaunchConfig(64, 128, 8, 2)]


@dataclass
class Result:
    phase: str  # decode | prefill
    case: str
    kernel: str  # fabriek | torch-sdpa | vllm-triton
    config: str
    ms: float
    tb_per_s: float | None = None
    tflops: float | None = None
    fraction_of_peak_bw: float | None = None
    error: str | None = None


def label(config: LaunchConfig) -> str:
    return f"M{config.block_m} N{config.tile_n} w{config.num_warps} s{config.num_stages}"


def measure(phase: str, case: str, kernel: str, config: str, make_fn, nbytes=None, flops=None,
            peak=None) -> Result:
    """Times one kernel; a kernel that fails (e.g. a tile config out of shared memory, or
    vLLM's kernel on another Triton) is recorded with its error instead of ending the run."""
    try:
        ms = time_ms(make_fn())
    except Exception as exc:  # noqa: BLE001 - any failure is a result to report
        return Result(phase, case, kernel, config, float("nan"), error=f"{type(exc).__name__}: {exc}"[:300])
    rate = nbytes / (ms * 1e-3) if nbytes else None
    return Result(phase, case, kernel, config, ms, tb_per_s=rate / 1e12 if rate else None,
                  fraction_of_peak_bw=rate / peak if rate and peak else None,
                  tflops=flops / (ms * 1e-3) / 1e12 if flops else None)


def peak_bandwidth() -> float | None:
    name = torch.cuda.get_device_name()
    return next((bw for card, bw in PEAK_HBM_BYTES_PER_S.items() if card in name), None)


def kv_bytes(batch: PagedBatch) -> int:
    """Bytes of K and V that decode must read: every context token, every KV head."""
    return int(batch.seq_lens.sum()) * NUM_KV_HEADS * HEAD_SIZE * 2 * batch.query.element_size()


def causal_flops(query_lens: list[int], seq_lens: list[int]) -> float:
    """4 * heads * dim FLOPs (QK^T and PV, 2 each) per visible (query, key) pair."""
    pairs = sum(q * (s - q) + q * (q + 1) / 2 for q, s in zip(query_lens, seq_lens))
    return 4 * NUM_Q_HEADS * HEAD_SIZE * pairs


def time_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def ours(batch: PagedBatch, config: LaunchConfig | None):
    out = torch.empty_like(batch.query)
    return lambda: paged_attention(batch.query, batch.key_cache, batch.value_cache, out,
                                   **batch.kernel_args(), softmax_scale=HEAD_SIZE ** -0.5,
                                   launch_config=config)


def vllm_triton(batch: PagedBatch):
    """vLLM's unified_attention as its backend calls it (3D split path for small batches)."""
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention

    num_seqs = batch.seq_lens.shape[0]
    out = torch.empty_like(batch.query)
    ones = torch.ones((num_seqs, NUM_KV_HEADS), dtype=torch.float32, device=batch.query.device)
    threshold, segments = 128 // NUM_KV_HEADS, 16  # MIN_LAUNCH_GRID_SIZE_2D // kv heads, as vLLM
    scratch = dict(
        seq_threshold_3D=threshold, num_par_softmax_segments=segments,
        softmax_segm_output=torch.empty((threshold, NUM_Q_HEADS, segments, HEAD_SIZE),
                                        dtype=torch.float32, device=out.device),
        softmax_segm_max=torch.empty((threshold, NUM_Q_HEADS, segments), dtype=torch.float32,
                                     device=out.device),
        softmax_segm_expsum=torch.empty((threshold, NUM_Q_HEADS, segments), dtype=torch.float32,
                                        device=out.device))
    return lambda: unified_attention(
        q=batch.query, k=batch.key_cache, v=batch.value_cache, out=out,
        cu_seqlens_q=batch.cu_seqlens_q, max_seqlen_q=batch.max_query_len,
        seqused_k=batch.seq_lens, max_seqlen_k=batch.max_seq_len,
        softmax_scale=HEAD_SIZE ** -0.5, causal=True, window_size=(-1, -1),
        block_table=batch.block_table, softcap=0, q_descale=None, k_descale=ones,
        v_descale=ones, **scratch), out


def torch_sdpa(num_seqs: int, query_len: int, seq_len: int, dtype, device):
    """Dense SDPA on the same shapes (contiguous K/V, GQA through enable_gqa)."""
    q = torch.randn((num_seqs, NUM_Q_HEADS, query_len, HEAD_SIZE), dtype=dtype, device=device)
    k = torch.randn((num_seqs, NUM_KV_HEADS, seq_len, HEAD_SIZE), dtype=dtype, device=device)
    v = torch.randn_like(k)
    causal = query_len > 1  # a decode query sees its whole context
    return lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=causal, enable_gqa=True)


def bench_decode(device, with_vllm: bool) -> list[Result]:
    results, peak = [], peak_bandwidth()
    for num_seqs, context in DECODE_CASES:
        batch = make_batch([1] * num_seqs, [context - 1] * num_seqs, num_q_heads=NUM_Q_HEADS,
                           num_kv_heads=NUM_KV_HEADS, head_size=HEAD_SIZE, block_size=BLOCK_SIZE,
                           dtype=torch.bfloat16, device=device, spare_blocks=0)
        case, nbytes = f"batch {num_seqs} x context {context}", kv_bytes(batch)
        runs = [("fabriek", label(c), lambda c=c: ours(batch, c)) for c in DECODE_CONFIGS]
        runs.append(("torch-sdpa", "enable_gqa",
                     lambda: torch_sdpa(num_seqs, 1, context, torch.bfloat16, device)))
        if with_vllm:
            runs.append(("vllm-triton", "as its backend", lambda: vllm_triton(batch)[0]))
        results += [measure("decode", case, kernel, config, make_fn, nbytes=nbytes, peak=peak)
                    for kernel, config, make_fn in runs]
        del batch
        torch.cuda.empty_cache()
    return results


def bench_prefill(device, with_vllm: bool) -> list[Result]:
    results = []
    for num_seqs, query_len in PREFILL_CASES:
        batch = make_batch([query_len] * num_seqs, [0] * num_seqs, num_q_heads=NUM_Q_HEADS,
                           num_kv_heads=NUM_KV_HEADS, head_size=HEAD_SIZE, block_size=BLOCK_SIZE,
                           dtype=torch.bfloat16, device=device, spare_blocks=0)
        case = f"{num_seqs} x {query_len} new tokens"
        flops = causal_flops([query_len] * num_seqs, [query_len] * num_seqs)
        runs = [("fabriek", label(c), lambda c=c: ours(batch, c)) for c in PREFILL_CONFIGS]
        runs.append(("torch-sdpa", "enable_gqa, causal",
                     lambda: torch_sdpa(num_seqs, query_len, query_len, torch.bfloat16, device)))
        if with_vllm:
            runs.append(("vllm-triton", "as its backend", lambda: vllm_triton(batch)[0]))
        results += [measure("prefill", case, kernel, config, make_fn, flops=flops)
                    for kernel, config, make_fn in runs]
        del batch
        torch.cuda.empty_cache()
    return results


def check_vllm_kernel_agrees(device) -> float:
    """Max difference between vLLM's kernel and ours on one mixed bf16 batch (sanity check
    that the comparison runs the same computation)."""
    batch = make_batch([100, 1, 1], [0, 300, 2000], num_q_heads=NUM_Q_HEADS,
                       num_kv_heads=NUM_KV_HEADS, head_size=HEAD_SIZE, block_size=BLOCK_SIZE,
                       dtype=torch.bfloat16, device=device)
    run_vllm, theirs = vllm_triton(batch)
    run_vllm()
    mine = torch.empty_like(batch.query)
    paged_attention(batch.query, batch.key_cache, batch.value_cache, mine, **batch.kernel_args(),
                    softmax_scale=HEAD_SIZE ** -0.5)
    return float((mine.float() - theirs.float()).abs().max())


def as_rows(results: list[Result]) -> list[dict]:
    return [{k: ((round(v, 4) if math.isfinite(v) else None) if isinstance(v, float) else v)
             for k, v in asdict(r).items()} for r in results]

"""Paged attention in Triton: one kernel for prefill, chunked prefill, decode and mixed
batches, with an optional split-KV grid (flash-decoding) and its reduction kernel.

Each program handles BLOCK_Q query tokens of one sequence and all query heads that share
one KV head (rows = token x head-in-group), so each key/value tile is read once per GQA
group. Keys are gathered token by token through the block table, which makes the tile
size independent of the cache's block size. See kernels/README.md for the grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # 1/ln(2): softmax runs on exp2, the hardware's native exp
# Compiled Triton reads only constexpr globals inside @triton.jit (the interpreter reads any).
_LOG2E_JIT: tl.constexpr = tl.constexpr(LOG2E)
MAX_HEAD_SIZE = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_KV_SPLITS = 64


@triton.jit
def _find_sequence(cu_seqlens_q_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    # Sequence i owns the q blocks from cu_seqlens_q[i] // BLOCK_Q + i onwards: one spare
    # block per sequence, so the grid needs no host-side knowledge of query lengths.
    lo: tl.int32 = 0
    hi: tl.int32 = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _attend_tiles(acc, m_i, l_i, q, q_pos,
                  key_cache_ptr, value_cache_ptr, block_table_row_ptr,
                  stride_kb, stride_ks, stride_vb, stride_vs,
                  tile_start, tile_end, seq_len, scale_log2, softcap, sliding_window,
                  dims, dim_mask,
                  MASKED: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_WINDOW: tl.constexpr,
                  TILE_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online softmax over key tiles [tile_start, tile_end); MASKED adds causal, window and
    end-of-sequence masks, which tiles strictly inside the visible range can skip."""
    for tile in range(tile_start, tile_end):
        k_pos = tile * TILE_N + tl.arange(0, TILE_N)
        in_seq = k_pos < seq_len
        # int64: page * stride overflows int32 for caches over 2**31 elements.
        page = tl.load(block_table_row_ptr + k_pos // BLOCK_SIZE, mask=in_seq, other=0).to(tl.int64)
        slot = (k_pos % BLOCK_SIZE).to(tl.int64)
        k_ptrs = key_cache_ptr + page[None, :] * stride_kb + slot[None, :] * stride_ks + dims[:, None]
        v_ptrs = value_cache_ptr + page[:, None] * stride_vb + slot[:, None] * stride_vs + dims[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=dim_mask[:, None] & in_seq[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs, mask=dim_mask[:, None], other=0.0)
        s = tl.dot(q, k, input_precision=DOT_PRECISION)  # [BLOCK_M, TILE_N], fp32
        if USE_SOFTCAP:
            s = s * (scale_log2 / _LOG2E_JIT)
            # tanh(x) = 1 - 2 / (exp(2x) + 1): saturates cleanly at +-1, no libdevice needed.
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0)) * _LOG2E_JIT
        else:
            s = s * scale_log2
        if MASKED:
            visible = (k_pos[None, :] <= q_pos[:, None]) & in_seq[None, :]
            if USE_WINDOW:
                visible = visible & (q_pos[:, None] - k_pos[None, :] < sliding_window)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no visible key yet keeps m = -inf; subtracting 0 instead
        # keeps exp2 at 0 rather than NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=in_seq[:, None] & dim_mask[None, :], other=0.0)
        else:
            v = tl.load(v_ptrs, mask=dim_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _paged_attention_kernel(
    out_ptr, query_ptr, key_cache_ptr, value_cache_ptr, block_table_ptr, cu_seqlens_q_ptr,
    seq_lens_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
    scale_log2, softcap, sliding_window, num_seqs,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    stride_pt, stride_ph, stride_ps,
    NUM_QUERIES_PER_KV: tl.constexpr, HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
    NUM_SPLITS: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tl.static_assert(BLOCK_Q * NUM_QUERIES_PER_KV <= BLOCK_M)
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = _find_sequence(cu_seqlens_q_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    q_block_local = q_block - (q_start // BLOCK_Q + seq)
    if q_block_local * BLOCK_Q >= q_len:
        return  # one of the spare blocks
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # new tokens sit at the end of the sequence

    rows = tl.arange(0, BLOCK_M)
    tok_in_seq = q_block_local * BLOCK_Q + rows // NUM_QUERIES_PER_KV
    head = kv_head * NUM_QUERIES_PER_KV + rows % NUM_QUERIES_PER_KV
    row_valid = (rows < BLOCK_Q * NUM_QUERIES_PER_KV) & (tok_in_seq < q_len)
    token = (q_start + tok_in_seq).to(tl.int64)
    dims = tl.arange(0, HEAD_PAD)
    dim_mask = dims < HEAD_SIZE
    q = tl.load(query_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
                mask=row_valid[:, None] & dim_mask[None, :], other=0.0)
    q_pos = context_len + tok_in_seq

    # Keys this q block needs, and the part every row sees (no masks needed there).
    first_pos = context_len + q_block_local * BLOCK_Q
    last_pos = context_len + tl.minimum(q_block_local * BLOCK_Q + BLOCK_Q, q_len) - 1
    if USE_WINDOW:
        kv_start = tl.maximum(first_pos - sliding_window + 1, 0)
        full_start = tl.maximum(last_pos - sliding_window + 1, 0)
    else:
        kv_start = 0
        full_start = 0
    tile_lo = kv_start // TILE_N
    tile_hi = tl.cdiv(last_pos + 1, TILE_N)
    # This split's share of the tiles (the whole range when NUM_SPLITS == 1).
    tiles_per_split = tl.cdiv(tile_hi - tile_lo, NUM_SPLITS)
    split_lo = tl.minimum(tile_lo + split * tiles_per_split, tile_hi)
    split_hi = tl.minimum(split_lo + tiles_per_split, tile_hi)
    full_lo = tl.cdiv(full_start, TILE_N)
    full_hi = tl.maximum((first_pos + 1) // TILE_N, full_lo)
    full_lo = tl.minimum(tl.maximum(full_lo, split_lo), split_hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), split_hi)

    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    k_base = key_cache_ptr + kv_head * stride_kh
    v_base = value_cache_ptr + kv_head * stride_vh
    table_row = block_table_ptr + seq.to(tl.int64) * stride_bt
    acc, m_i, l_i = _attend_tiles(acc, m_i, l_i, q, q_pos, k_base, v_base, table_row,
                                  stride_kb, stride_ks, stride_vb, stride_vs,
                                  split_lo, full_lo, seq_len, scale_log2, softcap, sliding_window,
                                  dims, dim_mask, True, USE_SOFTCAP, USE_WINDOW, TILE_N, BLOCK_SIZE,
                                  DOT_PRECISION)
    acc, m_i, l_i = _attend_tiles(acc, m_i, l_i, q, q_pos, k_base, v_base, table_row,
                                  stride_kb, stride_ks, stride_vb, stride_vs,
                                  full_lo, full_hi, seq_len, scale_log2, softcap, sliding_window,
                                  dims, dim_mask, False, USE_SOFTCAP, USE_WINDOW, TILE_N, BLOCK_SIZE,
                                  DOT_PRECISION)
    acc, m_i, l_i = _attend_tiles(acc, m_i, l_i, q, q_pos, k_base, v_base, table_row,
                                  stride_kb, stride_ks, stride_vb, stride_vs,
                                  full_hi, split_hi, seq_len, scale_log2, softcap, sliding_window,
                                  dims, dim_mask, True, USE_SOFTCAP, USE_WINDOW, TILE_N, BLOCK_SIZE,
                                  DOT_PRECISION)

    if NUM_SPLITS == 1:
        # Padding rows saw no key (l = 0); dividing by 1 keeps them finite, and unstored.
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & dim_mask[None, :])
    else:
        # Unnormalized partials; the reduction rescales them by their running maxima.
        part = token * stride_pt + head.to(tl.int64) * stride_ph + split * stride_ps
        tl.store(partial_out_ptr + part[:, None] + dims[None, :], acc,
                 mask=row_valid[:, None] & dim_mask[None, :])
        stat = (token * stride_pt + head.to(tl.int64) * stride_ph) // HEAD_PAD + split
        tl.store(partial_max_ptr + stat, m_i, mask=row_valid)
        tl.store(partial_sum_ptr + stat, l_i, mask=row_valid)


@triton.jit
def _reduce_splits_kernel(out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
                          stride_ot, stride_oh, stride_pt, stride_ph, stride_ps,
                          HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
                          NUM_SPLITS: tl.constexpr):
    """Combines the splits of one (token, head): sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s."""
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_PAD)
    stat = (token * stride_pt + head * stride_ph) // HEAD_PAD + splits
    m = tl.load(partial_max_ptr + stat)
    l_sum = tl.load(partial_sum_ptr + stat)
    m_max = tl.max(m, 0)
    weight = tl.math.exp2(m - m_max)  # splits that saw no key have m = -inf: weight 0
    dim_mask = dims < HEAD_SIZE
    # The padding dims (head size 80 pads to 128) were never written: masked, not read.
    acc = tl.load(partial_out_ptr + token * stride_pt + head * stride_ph
                  + splits[:, None] * stride_ps + dims[None, :], mask=dim_mask[None, :], other=0.0)
    out = tl.sum(acc * weight[:, None], 0) / tl.sum(l_sum * weight, 0)
    tl.store(out_ptr + token * stride_ot + head * stride_oh + dims,
             out.to(out_ptr.dtype.element_ty), mask=dim_mask)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile shapes and scheduling of one launch (every field is a Triton constexpr or
    launch option, so each distinct config compiles once)."""

    block_m: int  # query rows per program: BLOCK_Q tokens x the heads of one GQA group
    tile_n: int  # keys per inner-loop step
    num_warps: int
    num_stages: int


def default_launch_config(head_size: int, num_queries_per_kv: int, is_decode: bool,
                          element_size: int = 2) -> LaunchConfig:
    """Tile shapes measured best on an H200 (docs/benchmarks.md): small row blocks for
    decode (memory-bound, rows = one GQA group) with long key tiles to keep many loads in
    flight; 128 x 128 tiles for prefill (compute-bound). Head size 256 and fp32 inputs
    (4-byte elements) shrink the tiles: K/V stages of 128 x 128 fp32 tiles do not fit in
    shared memory (seen on the H200: prefill hd 128 fp32 ran out of it)."""
    group = triton.next_power_of_2(num_queries_per_kv)
    wide = head_size * element_size > 256  # bytes per key row beyond bf16 hd 128
    if is_decode:
        return LaunchConfig(block_m=max(16, group), tile_n=64 if wide else 128,
                            num_warps=4, num_stages=2 if wide else 3)
    if not wide:
        return LaunchConfig(block_m=max(128, group), tile_n=128, num_warps=8, num_stages=2)
    return LaunchConfig(block_m=max(64, group), tile_n=32, num_warps=8, num_stages=2)


@functools.lru_cache(maxsize=None)
def _num_compute_units(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # CPU (Triton's interpreter): splitting only adds work


def choose_num_kv_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, tile_n: int,
                         device: torch.device) -> int:
    """Enough splits that a decode batch fills the GPU twice over, each split keeping at
    least four key tiles; a power of two so few variants compile."""
    wanted = triton.cdiv(2 * _num_compute_units(device), max(num_seqs * num_kv_heads, 1))
    useful = max(1, max_seq_len // (4 * tile_n))
    splits = min(wanted, useful, MAX_KV_SPLITS)
    return 1 if splits <= 1 else 1 << (splits.bit_length() - 1)


def _check_inputs(query, key_cache, value_cache, out, cu_seqlens_q, seq_lens, block_table):
    if query.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"query dtype {query.dtype} is not one of {SUPPORTED_DTYPES}")
    if key_cache.dtype != query.dtype or value_cache.dtype != query.dtype or out.dtype != query.dtype:
        raise ValueError("query, key_cache, value_cache and out must share one dtype "
                         "(quantized KV caches are not supported)")
    if query.dim() != 3 or key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError("expected query [tokens, heads, dim] and caches "
                         "[blocks, block_size, kv_heads, dim] of one shape")
    num_q_heads, head_size = query.shape[1], query.shape[2]
    num_kv_heads = key_cache.shape[2]
    if key_cache.shape[3] != head_size or out.shape != query.shape:
        raise ValueError(f"head size {head_size} does not match cache {tuple(key_cache.shape)} "
                         f"or out {tuple(out.shape)}")
    if head_size > MAX_HEAD_SIZE or head_size % 16:
        raise ValueError(f"head size {head_size} unsupported: need a multiple of 16 up to {MAX_HEAD_SIZE}")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    for name, tensor in (("query", query), ("out", out), ("key_cache", key_cache),
                         ("value_cache", value_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name}: the head dimension must be contiguous")
    for name, tensor in (("cu_seqlens_q", cu_seqlens_q), ("seq_lens", seq_lens),
                         ("block_table", block_table)):
        if tensor.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {tensor.dtype}")
    if cu_seqlens_q.shape[0] != seq_lens.shape[0] + 1 or block_table.shape[0] < seq_lens.shape[0]:
        raise ValueError("cu_seqlens_q must have batch + 1 entries and block_table a row per sequence")


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    out: torch.Tensor, *, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                    max_query_len: int, max_seq_len: int, block_table: torch.Tensor,
                    softmax_scale: float, sliding_window: int | None = None, softcap: float = 0.0,
                    num_kv_splits: int | None = None,
                    launch_config: LaunchConfig | None = None) -> torch.Tensor:
    """Causal attention of each sequence's new query tokens against its paged KV cache.

    Args:
        query: [num_tokens, num_q_heads, head_size]; sequence i's tokens are rows
            cu_seqlens_q[i]:cu_seqlens_q[i+1], the last positions of its context.
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size], any
            strides with a contiguous head dimension; the new tokens are already written.
        out: like query; written in place and returned.
        cu_seqlens_q: [batch + 1] int32.
        seq_lens: [batch] int32, context length per sequence including the new tokens.
        max_query_len, max_seq_len: host-side bounds (pick the decode path and the splits).
        block_table: [batch, max_blocks_per_seq] int32.
        softmax_scale: multiplies q.k before soft-cap and softmax.
        sliding_window: how many most recent keys a query sees, itself included; None = all.
        softcap: logits become softcap * tanh(logits / softcap) when > 0.
        num_kv_splits: split-KV programs per (sequence, KV head); by default chosen for
            decode-only batches from the GPU's size, 1 otherwise.
        launch_config: tile shapes; by default from ``default_launch_config``.

    Raises:
        ValueError: for unsupported dtypes, head sizes, layouts or index dtypes.
    """
    _check_inputs(query, key_cache, value_cache, out, cu_seqlens_q, seq_lens, block_table)
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    num_tokens, num_q_heads, head_size = query.shape
    num_seqs, num_kv_heads = seq_lens.shape[0], key_cache.shape[2]
    if num_tokens == 0 or num_seqs == 0:
        return out
    group = num_q_heads // num_kv_heads
    is_decode = max_query_len == 1
    config = launch_config or default_launch_config(head_size, group, is_decode,
                                                     query.element_size())
    block_q = config.block_m // group
    if block_q < 1:
        raise ValueError(f"block_m {config.block_m} is smaller than the GQA group {group}")
    if num_kv_splits is None:
        num_kv_splits = (choose_num_kv_splits(num_seqs, num_kv_heads, max_seq_len, config.tile_n,
                                              query.device) if is_decode else 1)
    if num_kv_splits < 1 or num_kv_splits & (num_kv_splits - 1):
        raise ValueError(f"num_kv_splits must be a power of two, got {num_kv_splits}")
    head_pad = triton.next_power_of_2(head_size)

    if num_kv_splits > 1:
        partial_out = torch.empty((num_tokens, num_q_heads, num_kv_splits, head_pad),
                                  dtype=torch.float32, device=query.device)
        # Statistics share the partials' token/head index: [tokens, heads, splits].
        partial_max = torch.empty(partial_out.shape[:3], dtype=torch.float32, device=query.device)
        partial_sum = torch.empty_like(partial_max)
        part_strides = partial_out.stride()[:3]
    else:
        partial_out = partial_max = partial_sum = out  # unused by the single-pass kernel
        part_strides = (0, 0, 0)

    grid = (num_tokens // block_q + num_seqs, num_kv_heads, num_kv_splits)
    _paged_attention_kernel[grid](
        out, query, key_cache, value_cache, block_table, cu_seqlens_q, seq_lens,
        partial_out, partial_max, partial_sum,
        softmax_scale * LOG2E, float(softcap), sliding_window or 0, num_seqs,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_table.stride(0), *part_strides,
        NUM_QUERIES_PER_KV=group, HEAD_SIZE=head_size, HEAD_PAD=head_pad,
        BLOCK_SIZE=key_cache.shape[1], TILE_N=config.tile_n, BLOCK_M=config.block_m,
        BLOCK_Q=block_q, NUM_SPLITS=num_kv_splits, USE_SOFTCAP=softcap > 0,
        USE_WINDOW=sliding_window is not None,
        # fp32 inputs would run as tf32 on tensor cores: keep them exact (16-bit ignore it).
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if num_kv_splits > 1:
        _reduce_splits_kernel[(num_tokens, num_q_heads)](
            out, partial_out, partial_max, partial_sum,
            out.stride(0), out.stride(1), *part_strides,
            HEAD_SIZE=head_size, HEAD_PAD=head_pad, NUM_SPLITS=num_kv_splits,
        )
    return out

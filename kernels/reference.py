"""Plain torch reference for the paged-attention contract: slow, obviously correct.

Every kernel test compares against these functions. They follow the launchers'
contract exactly (shapes, sliding window, soft-cap semantics).

The attention reference computes in float64 on one thread. In fp32 on several threads,
torch's CPU path once gave, on the first call of a busy process, one thread's half of the
heads off by 3.7e-4 (18x the fp32 tolerance) while the kernel matched a float64 result to
1.3e-6: a reference must not be the side that is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reference_write_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                             value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Writes new keys and values into their cache slots; a negative slot is padding.

    Args:
        key, value: [num_tokens, num_kv_heads, head_size].
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size].
        slot_mapping: [num_tokens] int, slot = block * block_size + offset.
    """
    block_size = key_cache.shape[1]
    for token, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        key_cache[slot // block_size, slot % block_size] = key[token]
        value_cache[slot // block_size, slot % block_size] = value[token]


def gather_sequence(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first ``seq_len`` tokens of one sequence, [seq_len, num_kv_heads, head_size]."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = cache[block_table_row[:num_blocks].long()]  # [n, block_size, heads, dim]
    return blocks.reshape(-1, *cache.shape[2:])[:seq_len]


def reference_paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                              *, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                              block_table: torch.Tensor, softmax_scale: float,
                              sliding_window: int | None = None, softcap: float = 0.0) -> torch.Tensor:
    """Causal attention of each sequence's new queries against its paged context.

    Args:
        query: [num_tokens, num_q_heads, head_size]; the new tokens of sequence ``i`` are
            rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]`` and sit at the last positions of
            its context.
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size].
        cu_seqlens_q: [batch + 1] int32.
        seq_lens: [batch] int32, context length including the new tokens.
        block_table: [batch, max_blocks_per_seq] int32.
        softmax_scale: multiplies q.k before soft-cap and softmax.
        sliding_window: how many most recent keys a query sees, itself included.
        softcap: if > 0, logits become ``softcap * tanh(logits / softcap)``.

    Returns:
        [num_tokens, num_q_heads, head_size] in ``query``'s dtype.
    """
    num_q_heads, num_kv_heads = query.shape[1], key_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(query)
    with _one_thread():
        starts = cu_seqlens_q.tolist()
        for seq, seq_len in enumerate(seq_lens.tolist()):
            q = query[starts[seq]:starts[seq + 1]].double()  # [q_len, Hq, D]
            q_len = q.shape[0]
            if q_len == 0:
                continue
            k = gather_sequence(key_cache, block_table[seq], seq_len).double()
            v = gather_sequence(value_cache, block_table[seq], seq_len).double()
            k = k.repeat_interleave(group, dim=1)  # query head h reads kv head h // group
            v = v.repeat_interleave(group, dim=1)
            logits = torch.einsum("qhd,khd->hqk", q, k) * softmax_scale
            if softcap > 0:
                logits = softcap * torch.tanh(logits / softcap)
            q_pos = torch.arange(seq_len - q_len, seq_len)[:, None]
            k_pos = torch.arange(seq_len)[None, :]
            visible = k_pos <= q_pos
            if sliding_window is not None:
                visible &= q_pos - k_pos < sliding_window
            logits = logits.masked_fill(~visible, float("-inf"))
            out[starts[seq]:starts[seq + 1]] = torch.einsum(
                "hqk,khd->qhd", logits.softmax(dim=-1), v).to(query.dtype)
        return out

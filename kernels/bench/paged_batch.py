"""Random paged KV caches and batches, shared by the kernel tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedBatch:
    """A batch of sequences whose new tokens attend to a scattered paged cache."""

    query: torch.Tensor  # [num_tokens, num_q_heads, head_size]
    key_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_size] (a strided view)
    value_cache: torch.Tensor
    cu_seqlens_q: torch.Tensor  # [batch + 1] int32
    seq_lens: torch.Tensor  # [batch] int32
    block_table: torch.Tensor  # [batch, max_blocks] int32
    max_query_len: int
    max_seq_len: int

    def kernel_args(self) -> dict:
        return dict(cu_seqlens_q=self.cu_seqlens_q, seq_lens=self.seq_lens,
                    max_query_len=self.max_query_len, max_seq_len=self.max_seq_len,
                    block_table=self.block_table)

    def reference_args(self) -> dict:
        return dict(cu_seqlens_q=self.cu_seqlens_q, seq_lens=self.seq_lens,
                    block_table=self.block_table)


def make_batch(query_lens: list[int], context_lens: list[int], *, num_q_heads: int,
               num_kv_heads: int, head_size: int, block_size: int, dtype: torch.dtype,
               device: torch.device | str = "cpu", spare_blocks: int = 5,
               generator: torch.Generator | None = None) -> PagedBatch:
    """Random queries and a cache in vLLM's [num_blocks, 2, block_size, heads, dim] layout,
    each sequence on a random, non-contiguous set of blocks; unused table entries point at
    block 0 as vLLM leaves them."""
    seq_lens = [c + q for c, q in zip(context_lens, query_lens)]
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    kv_cache = torch.randn((num_blocks, 2, block_size, num_kv_heads, head_size),
                           generator=generator, dtype=torch.float32).to(dtype=dtype, device=device)
    key_cache, value_cache = kv_cache.unbind(1)
    order = torch.randperm(num_blocks, generator=generator)
    block_table = torch.zeros((len(seq_lens), max(blocks_per_seq) + 1), dtype=torch.int32)
    used = 0
    for seq, count in enumerate(blocks_per_seq):
        block_table[seq, :count] = order[used:used + count]
        used += count
    query = torch.randn((sum(query_lens), num_q_heads, head_size), generator=generator,
                        dtype=torch.float32).to(dtype=dtype, device=device)
    cu_seqlens_q = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    return PagedBatch(query, key_cache, value_cache, cu_seqlens_q.to(device),
                      torch.tensor(seq_lens, dtype=torch.int32, device=device),
                      block_table.to(device), max(query_lens), max(seq_lens))

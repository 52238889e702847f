"""The cache-write kernel against the reference, including padding slots."""

from __future__ import annotations

import pytest
import torch

from kernels import write_kv_cache
from kernels.reference import reference_write_kv_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size,head_size", [(16, 64), (32, 128), (64, 256), (16, 80)])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_write_kv_cache(device, dtype, block_size, head_size, slot_dtype):
    generator = torch.Generator().manual_seed(block_size + head_size)
    num_blocks, num_kv_heads, num_tokens = 9, 3, 23
    kv_cache = torch.randn((num_blocks, 2, block_size, num_kv_heads, head_size),
                           generator=generator).to(dtype=dtype, device=device)
    expected = kv_cache.clone().cpu()
    key = torch.randn((num_tokens, num_kv_heads, head_size), generator=generator).to(dtype=dtype, device=device)
    value = torch.randn_like(key)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens]
    slots[[3, 10]] = -1  # padding tokens are skipped
    slot_mapping = slots.to(dtype=slot_dtype, device=device)
    write_kv_cache(key, value, *kv_cache.unbind(1), slot_mapping)
    reference_write_kv_cache(key.cpu(), value.cpu(), *expected.unbind(1), slots)
    torch.testing.assert_close(kv_cache.cpu(), expected, atol=0, rtol=0)


def test_rejects_mismatched_cache(device):
    key = torch.zeros((2, 3, 64))
    cache = torch.zeros((4, 16, 3, 128))
    with pytest.raises(ValueError, match="heads of size 64"):
        write_kv_cache(key, key, cache, cache, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="quantized"):
        write_kv_cache(key.half(), key.half(), torch.zeros((4, 16, 3, 64)),
                       torch.zeros((4, 16, 3, 64)), torch.zeros(2, dtype=torch.int64))

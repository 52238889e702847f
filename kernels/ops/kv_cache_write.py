"""Triton kernel that writes new keys and values into the paged KV cache."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_cache_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_mapping_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_cs, stride_ch,  # key cache: block, slot-in-block, head
    stride_vcb, stride_vcs, stride_vch,  # value cache may have other strides
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    # One program per (token, kv head): a head row is at most 256 elements, so the
    # whole row moves in one vector load/store.
    token = tl.program_id(0)
    head = tl.program_id(1)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # padding token (e.g. a CUDA-graph batch filled up)
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    dims = tl.arange(0, HEAD_PAD)
    dim_mask = dims < HEAD_SIZE
    k = tl.load(key_ptr + token * stride_kt + head * stride_kh + dims, mask=dim_mask)
    v = tl.load(value_ptr + token * stride_vt + head * stride_vh + dims, mask=dim_mask)
    tl.store(key_cache_ptr + block * stride_cb + offset * stride_cs + head * stride_ch + dims,
             k, mask=dim_mask)
    tl.store(value_cache_ptr + block * stride_vcb + offset * stride_vcs + head * stride_vch + dims,
             v, mask=dim_mask)


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                   value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Writes each token's keys and values into its cache slot.

    Args:
        key, value: [num_tokens, num_kv_heads, head_size], last dim contiguous.
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size], any
            strides with the last dim contiguous (e.g. ``kv_cache.unbind(1)`` of a
            [num_blocks, 2, block_size, num_kv_heads, head_size] cache).
        slot_mapping: [num_tokens] int32/int64, slot = block * block_size + offset;
            a negative slot marks a padding token and is skipped.

    Raises:
        ValueError: on mismatched shapes, dtypes or a non-contiguous head dimension.
    """
    num_tokens, num_kv_heads, head_size = key.shape
    if value.shape != key.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} differ")
    if key_cache.shape != value_cache.shape or key_cache.shape[2:] != (num_kv_heads, head_size):
        raise ValueError(f"caches {tuple(key_cache.shape)}/{tuple(value_cache.shape)} do not "
                         f"hold {num_kv_heads} heads of size {head_size}")
    if key_cache.dtype != key.dtype or value_cache.dtype != value.dtype:
        raise ValueError(f"cache dtype {key_cache.dtype} != key dtype {key.dtype} "
                         "(quantized KV caches are not supported)")
    for name, tensor in (("key", key), ("value", value), ("key_cache", key_cache),
                         ("value_cache", value_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name}: the head dimension must be contiguous")
    if slot_mapping.shape[0] < num_tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} slots for {num_tokens} tokens")
    if num_tokens == 0:
        return
    _write_kv_cache_kernel[(num_tokens, num_kv_heads)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        HEAD_SIZE=head_size, HEAD_PAD=triton.next_power_of_2(head_size),
        BLOCK_SIZE=key_cache.shape[1],
    )

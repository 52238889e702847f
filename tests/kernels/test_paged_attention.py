"""Paged attention against the torch reference over awkward shapes (vLLM-style grid)."""

from __future__ import annotations

import pytest
import torch

from kernels import LaunchConfig, paged_attention
from kernels.reference import reference_paged_attention
from kernels.bench.paged_batch import make_batch

# fp16 inputs, fp32 accumulation: differences come from rounding P to fp16 before P @ V.
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=4e-3, rtol=4e-3),
             torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
CPU_DTYPES = [torch.float32, torch.float16]  # the interpreter mishandles bf16
# (query heads, kv heads): MHA, SmolLM2's group of 3, GQA 5:1, MQA.
HEADS = [(4, 4), (9, 3), (10, 2), (8, 1)]


def run_and_compare(batch, *, sliding_window=None, softcap=0.0, num_kv_splits=None,
                    launch_config=None, msg=""):
    head_size = batch.query.shape[-1]
    out = torch.full_like(batch.query, float("nan"))  # every row must be written
    paged_attention(batch.query, batch.key_cache, batch.value_cache, out, **batch.kernel_args(),
                    softmax_scale=head_size ** -0.5, sliding_window=sliding_window,
                    softcap=softcap, num_kv_splits=num_kv_splits, launch_config=launch_config)
    expected = reference_paged_attention(
        batch.query.cpu(), batch.key_cache.cpu(), batch.value_cache.cpu(),
        **{k: v.cpu() for k, v in batch.reference_args().items()},
        softmax_scale=head_size ** -0.5, sliding_window=sliding_window, softcap=softcap)
    # The case's name beside torch's own report (how many elements, the largest difference),
    # which a plain ``msg`` would replace.
    torch.testing.assert_close(out.cpu(), expected, **TOLERANCE[batch.query.dtype],
                               msg=lambda report: f"{msg}\n{report}")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("num_kv_splits", [1, 4])
def test_decode(device, dtype, block_size, heads, num_kv_splits):
    # Ragged contexts: shorter than a tile, exactly a block, and several tiles long.
    generator = torch.Generator().manual_seed(block_size * 7 + heads[0])
    batch = make_batch([1, 1, 1, 1], [0, block_size - 1, 70, 301], num_q_heads=heads[0],
                       num_kv_heads=heads[1], head_size=64, block_size=block_size, dtype=dtype,
                       device=device, generator=generator)
    run_and_compare(batch, num_kv_splits=num_kv_splits, msg=f"decode {heads} bs={block_size}")


@pytest.mark.parametrize("head_size", [64, 128, 256, 80])
@pytest.mark.parametrize("num_kv_splits", [1, 2])
def test_decode_head_sizes(device, head_size, num_kv_splits):
    generator = torch.Generator().manual_seed(head_size)
    batch = make_batch([1, 1, 1], [9, 64, 200], num_q_heads=9, num_kv_heads=3,
                       head_size=head_size, block_size=16, dtype=torch.float16, device=device,
                       generator=generator)
    run_and_compare(batch, num_kv_splits=num_kv_splits, msg=f"head size {head_size}")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("head_size", [64, 128, 256])
def test_mixed_prefill_and_decode(device, dtype, heads, head_size):
    # One batch with a fresh prefill, a decode, a chunked prefill on a long context and a
    # one-token "prefill": vLLM's scheduler mixes all of them.
    generator = torch.Generator().manual_seed(head_size + heads[1])
    batch = make_batch([37, 1, 20, 1, 5], [0, 45, 100, 0, 16], num_q_heads=heads[0],
                       num_kv_heads=heads[1], head_size=head_size, block_size=16, dtype=dtype,
                       device=device, generator=generator)
    run_and_compare(batch, msg=f"mixed {heads} d={head_size}")


@pytest.mark.parametrize("sliding_window", [1, 7, 32, 1000])
@pytest.mark.parametrize("num_kv_splits", [1, 4])
def test_sliding_window(device, sliding_window, num_kv_splits):
    generator = torch.Generator().manual_seed(sliding_window)
    decode = make_batch([1, 1, 1], [3, 90, 250], num_q_heads=9, num_kv_heads=3, head_size=64,
                        block_size=16, dtype=torch.float32, device=device, generator=generator)
    run_and_compare(decode, sliding_window=sliding_window, num_kv_splits=num_kv_splits,
                    msg=f"decode window {sliding_window}")
    mixed = make_batch([40, 3, 1], [0, 77, 130], num_q_heads=9, num_kv_heads=3, head_size=64,
                       block_size=32, dtype=torch.float32, device=device, generator=generator)
    run_and_compare(mixed, sliding_window=sliding_window, num_kv_splits=num_kv_splits,
                    msg=f"mixed window {sliding_window}")


@pytest.mark.parametrize("softcap", [5.0, 30.0])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_softcap(device, softcap, dtype):
    generator = torch.Generator().manual_seed(int(softcap))
    batch = make_batch([17, 1, 1], [0, 33, 120], num_q_heads=8, num_kv_heads=2, head_size=128,
                       block_size=16, dtype=dtype, device=device, generator=generator)
    # Large logits, so the cap actually bites.
    batch.query.mul_(4)
    run_and_compare(batch, softcap=softcap, msg=f"softcap {softcap}")
    run_and_compare(batch, softcap=softcap, sliding_window=24, num_kv_splits=2,
                    msg=f"softcap {softcap} with window and splits")


@pytest.mark.parametrize("config", [LaunchConfig(16, 16, 4, 1), LaunchConfig(32, 64, 4, 2),
                                    LaunchConfig(64, 32, 4, 2)])
def test_tile_shapes_do_not_change_results(device, config):
    # Tiles smaller and larger than the cache's block size, and several q blocks per sequence.
    generator = torch.Generator().manual_seed(config.block_m + config.tile_n)
    batch = make_batch([50, 1, 9], [10, 60, 0], num_q_heads=9, num_kv_heads=3, head_size=64,
                       block_size=32, dtype=torch.float32, device=device, generator=generator)
    run_and_compare(batch, launch_config=config, sliding_window=40, msg=str(config))


def test_more_splits_than_tiles(device):
    # Short contexts leave most splits empty: their weight in the reduction must be zero.
    batch = make_batch([1, 1], [0, 5], num_q_heads=4, num_kv_heads=1, head_size=64,
                       block_size=16, dtype=torch.float32, device=device,
                       generator=torch.Generator().manual_seed(1))
    run_and_compare(batch, num_kv_splits=16)


def test_query_rows_after_the_batch_are_left_alone(device):
    # vLLM pads the token dimension (CUDA graphs); rows past cu_seqlens_q[-1] stay untouched.
    batch = make_batch([3, 1], [5, 7], num_q_heads=4, num_kv_heads=2, head_size=64,
                       block_size=16, dtype=torch.float32, device=device,
                       generator=torch.Generator().manual_seed(2))
    padded = torch.cat([batch.query, torch.randn_like(batch.query[:2])])
    out = torch.zeros_like(padded)
    paged_attention(padded, batch.key_cache, batch.value_cache, out, **batch.kernel_args(),
                    softmax_scale=0.125)
    assert out[-2:].abs().sum() == 0


def test_rejects_unsupported_inputs():
    batch = make_batch([2], [3], num_q_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                       dtype=torch.float32)
    out = torch.empty_like(batch.query)
    args = dict(batch.kernel_args(), softmax_scale=0.1)
    with pytest.raises(ValueError, match="share one dtype"):
        paged_attention(batch.query.half(), batch.key_cache, batch.value_cache, out.half(), **args)
    with pytest.raises(ValueError, match="int32"):
        paged_attention(batch.query, batch.key_cache, batch.value_cache, out,
                        **dict(args, block_table=batch.block_table.long()))
    with pytest.raises(ValueError, match="sliding_window"):
        paged_attention(batch.query, batch.key_cache, batch.value_cache, out, **args,
                        sliding_window=0)
    with pytest.raises(ValueError, match="power of two"):
        paged_attention(batch.query, batch.key_cache, batch.value_cache, out, **args,
                        num_kv_splits=3)
    odd = make_batch([2], [3], num_q_heads=6, num_kv_heads=4, head_size=64, block_size=16,
                     dtype=torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(odd.query, odd.key_cache, odd.value_cache, torch.empty_like(odd.query),
                        **dict(odd.kernel_args(), softmax_scale=0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 needs a GPU (the interpreter mishandles it)")
@pytest.mark.parametrize("heads", HEADS)
def test_bf16_on_gpu(device, heads):
    generator = torch.Generator().manual_seed(3)
    batch = make_batch([64, 1, 1, 200], [0, 500, 4000, 300], num_q_heads=heads[0],
                       num_kv_heads=heads[1], head_size=128, block_size=16,
                       dtype=torch.bfloat16, device=device, generator=generator)
    run_and_compare(batch, msg=f"bf16 {heads}")
    run_and_compare(batch, num_kv_splits=8, sliding_window=256, msg=f"bf16 split {heads}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a >2**31-element cache needs a GPU's memory")
def test_block_ids_past_int32_element_offsets(device):
    # 140k blocks of 16 x 8 x 128 bf16: block * stride overflows int32 element offsets.
    num_blocks, block_size, num_kv_heads, head_size = 140_000, 16, 8, 128
    kv_cache = torch.empty((num_blocks, 2, block_size, num_kv_heads, head_size),
                           dtype=torch.bfloat16, device=device)
    small = make_batch([1, 30], [400, 100], num_q_heads=32, num_kv_heads=num_kv_heads,
                       head_size=head_size, block_size=block_size, dtype=torch.bfloat16,
                       device=device, generator=torch.Generator().manual_seed(4))
    # Move the small batch's blocks to the top of the big cache.
    high_ids = small.block_table.long() + num_blocks - small.key_cache.shape[0]
    kv_cache[high_ids.flatten(), 0] = small.key_cache[small.block_table.long().flatten()]
    kv_cache[high_ids.flatten(), 1] = small.value_cache[small.block_table.long().flatten()]
    out = torch.empty_like(small.query)
    key_cache, value_cache = kv_cache.unbind(1)
    paged_attention(small.query, key_cache, value_cache, out,
                    **dict(small.kernel_args(), block_table=high_ids.int()), softmax_scale=0.088)
    expected = reference_paged_attention(
        small.query.cpu(), small.key_cache.cpu(), small.value_cache.cpu(),
        **{k: v.cpu() for k, v in small.reference_args().items()}, softmax_scale=0.088)
    torch.testing.assert_close(out.cpu(), expected, **TOLERANCE[torch.bfloat16])

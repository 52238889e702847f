"""Loading tenants' adapters at engine start: a broken one is left out, never fatal."""

from __future__ import annotations

import asyncio
import json
import logging

from serving.engine.lora_adapters import AdapterError, check_adapter_dir, load_adapters


class RecordingEngine:
    """Takes the place of Ray's VLLMEngine at its one call, ``resolve_lora``."""

    def __init__(self, refuse: set[str] = frozenset()):
        self.loaded: dict[str, str] = {}
        self._refuse = refuse

    async def resolve_lora(self, config) -> None:
        if config.model_id in self._refuse:
            raise ValueError("Failed to load lora model: rank 64 is over max_lora_rank 16")
        self.loaded[config.model_id] = config.local_path


def adapter_dir(tmp_path, name: str, config: object = None):
    path = tmp_path / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(config or {"peft_type": "LORA", "r": 8}))
    return path


def test_adapters_load_and_broken_ones_are_logged_and_left_out(tmp_path, caplog):
    good, big = adapter_dir(tmp_path, "good"), adapter_dir(tmp_path, "big")
    prefix = adapter_dir(tmp_path, "prefix", {"peft_type": "PREFIX_TUNING"})
    engine = RecordingEngine(refuse={"t-big"})
    adapters = {"t-good": str(good), "t-big": str(big), "t-prefix": str(prefix), "t-gone": str(tmp_path / "gone")}
    with caplog.at_level(logging.ERROR, logger="fabriek.engine"):
        loaded = asyncio.run(load_adapters(engine, adapters))
    assert loaded == ["t-good"] and engine.loaded == {"t-good": str(good)}
    logged = caplog.text
    for adapter, why in [("t-big", "max_lora_rank"), ("t-prefix", "not a LoRA adapter"),
                         ("t-gone", "no adapter_config.json")]:
        assert f"adapter {adapter}" in logged and why in logged


def test_a_config_that_is_not_json_is_an_adapter_error(tmp_path):
    path = tmp_path / "a"
    path.mkdir()
    (path / "adapter_config.json").write_text("{not json")
    try:
        check_adapter_dir(path)
    except AdapterError as err:
        assert "adapter_config.json" in str(err)
    else:
        raise AssertionError("a broken adapter_config.json was accepted")

"""Loading a config without the vLLM and Ray checks (`fabriek keys`, `fabriek usage`):
the same config, fabriek's own rules still applied, only the libraries' lookups skipped."""

from __future__ import annotations

import copy

import pytest

from serving.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

VALID = {
    "models": [{"id": "m", "source": "/models/m", "engine_args": {"dtype": "bfloat16"}}],
    "pools": [{"name": "gov", "accelerator": "gpu", "models": ["m"], "deployment": {"num_replicas": 2}}],
}


def _with(section: str, key: str, value) -> dict:
    config = copy.deepcopy(VALID)
    target = config["models"][0]["engine_args"] if section == "engine_args" else config["pools"][0]["deployment"]
    target[key] = value
    return config


def test_skipping_the_library_checks_loads_the_same_config():
    assert load_config(DEFAULT_CONFIG_PATH, check_library_settings=False) == load_config(DEFAULT_CONFIG_PATH)


@pytest.mark.parametrize(("section", "key", "message"), [
    ("engine_args", "not_an_engine_arg", "unknown vLLM engine argument"),
    ("deployment", "not_an_option", "unknown Ray Serve deployment option"),
])
def test_unknown_library_settings_are_refused_only_when_checked(section, key, message):
    config = _with(section, key, 1)
    with pytest.raises(ConfigError, match=message):
        load_config(config)
    assert load_config(config, check_library_settings=False).models[0].id == "m"


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("engine_args", "model", "x", "set by fabriek"),
    ("engine_args", "enable_log_requests", True, "would log request content"),
    ("deployment", "name", "x", "set by fabriek"),
    ("deployment", "ray_actor_options", 3, "must be a mapping"),
])
def test_fabriek_rules_hold_without_the_library_checks(section, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_with(section, key, value), check_library_settings=False)

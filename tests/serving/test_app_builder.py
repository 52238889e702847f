"""The Serve import path: a Ray Serve config file builds the fabriek application."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.deployment import Application
from ray.serve.schema import ServeDeploySchema

from serving.app import build_app
from serving.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def default_model_prepared():
    from serving.default_model import prepare_default_model

    prepare_default_model(show_progress=False)
    yield
    # Ray Serve LLM's builder reads the runtime context, which starts a local Ray
    # instance in this process; stop it so later tests start their own.
    ray.shutdown()


def test_serve_config_file_is_valid_and_builds_the_app(monkeypatch):
    monkeypatch.chdir(REPO)  # config_path in the file is relative to the repo
    schema = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deploy/serve-config.yaml").read_text()))
    [app_schema] = schema.applications
    module, attr = app_schema.import_path.split(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    assert isinstance(builder(app_schema.args), Application)


def test_builder_takes_the_config_inline():
    inline = load_config(DEFAULT_CONFIG_PATH).model_dump()
    assert isinstance(build_app({"config": inline}), Application)


def test_builder_refuses_unknown_or_conflicting_args():
    with pytest.raises(ValueError, match="`config` or `config_path`"):
        build_app({"config_file": "x.yaml"})
    with pytest.raises(ValueError, match="`config` or `config_path`"):
        build_app({"config": {}, "config_path": "x.yaml"})


def test_a_model_in_two_pools_is_refused_until_tenant_routing_exists():
    inline = load_config(DEFAULT_CONFIG_PATH).model_dump()
    second = dict(inline["pools"][0], name="second")
    with pytest.raises(ConfigError, match="served by pools \\['default', 'second'\\]"):
        build_app({"config": {**inline, "pools": [inline["pools"][0], second]}})

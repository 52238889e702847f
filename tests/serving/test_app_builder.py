"""The Serve import path: a Ray Serve config file builds the fabriek application."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.deployment import Application
from ray.serve.schema import ServeDeploySchema

from serving.app import build_app
from serving.config import DEFAULT_CONFIG_PATH, load_config
from serving.engine.engines import build_engine_deployments

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module", autouse=True)
def default_model_prepared():
    from serving.engine.default_model import prepare_default_model

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


def test_one_model_on_two_pools_gives_two_deployments_pinned_to_their_pool():
    engines = build_engine_deployments(load_config(DEFAULT_CONFIG_PATH))
    assert [(e.pool, e.model_id) for e in engines] == [("government", MODEL), ("commercial", MODEL)]
    for engine, core in zip(engines, ["0", "1"]):
        deployment = engine.app._bound_deployment
        assert deployment.name == f"{engine.pool}--{MODEL}"
        # Every bundle, the replica's included, needs the pool's resource: nothing of the
        # pool can be placed on another pool's nodes.
        bundles = deployment._replica_config.placement_group_bundles
        assert bundles and all(b.get(f"pool_{engine.pool}", 0) > 0 for b in bundles)
        assert not any(k.startswith("pool_") and k != f"pool_{engine.pool}" for b in bundles for k in b)
        env = deployment._replica_config.ray_actor_options["runtime_env"]["env_vars"]
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == core

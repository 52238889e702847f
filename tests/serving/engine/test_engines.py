"""From platform config to Ray Serve LLM configs (no engine is started here)."""

from __future__ import annotations

import pytest

from serving.config import load_config
from serving.engine.default_model import ModelPrepareError
from serving.engine.engines import engine_args_for, llm_config_for, resolve_model_source

CONFIG = load_config({
    "models": [
        {"id": "m", "source": "/models/m", "engine_args": {"dtype": "bfloat16", "max_num_seqs": 4}},
        {"id": "s3m", "source": "s3://bucket/m"},
    ],
    "pools": [{"name": "gov", "accelerator": "cpu", "models": ["m", "s3m"],
               "engine_args": {"max_num_seqs": 16}, "deployment": {"num_replicas": 2}}],
})


def test_pool_engine_args_override_model_args():
    assert engine_args_for(CONFIG.pools[0], CONFIG.model("m")) == {"dtype": "bfloat16", "max_num_seqs": 16,
                                                                   "enable_log_requests": False}


def test_llm_config_carries_id_source_args_and_offline_env():
    llm_config = llm_config_for(CONFIG.pools[0], CONFIG.model("m"), "/models/m")
    assert llm_config.model_id == "m"
    assert llm_config.model_loading_config.model_source == "/models/m"
    assert llm_config.engine_kwargs["max_num_seqs"] == 16
    assert llm_config.accelerator_config.kind == "cpu"
    assert llm_config.deployment_config["num_replicas"] == 2
    assert llm_config.runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_pool_env_vars_survive_beside_the_offline_settings():
    config = load_config({
        "models": [{"id": "m", "source": "/models/m"}],
        "pools": [{"name": "p", "accelerator": "cpu", "models": ["m"], "deployment": {
            "ray_actor_options": {"runtime_env": {"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": "0"}}}}}]})
    env = llm_config_for(config.pools[0], config.model("m"), "/models/m").runtime_env["env_vars"]
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_object_store_source_becomes_a_cloud_mirror():
    assert resolve_model_source(CONFIG.model("s3m")) == {"bucket_uri": "s3://bucket/m"}


def test_unprepared_builtin_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FABRIEK_HOME", str(tmp_path))
    config = load_config({"models": [{"id": "d", "source": "fabriek://smollm2-135m-instruct"}],
                          "pools": [{"name": "p", "accelerator": "cpu", "models": ["d"]}]})
    with pytest.raises(ModelPrepareError, match="fabriek models prepare"):
        resolve_model_source(config.model("d"))


def test_unknown_builtin_model_is_refused():
    config = load_config({"models": [{"id": "d", "source": "fabriek://gpt-nl"}],
                          "pools": [{"name": "p", "accelerator": "cpu", "models": ["d"]}]})
    with pytest.raises(ModelPrepareError, match="unknown built-in model 'gpt-nl'"):
        resolve_model_source(config.model("d"))


def test_pool_resource_is_in_every_engine_bundle_and_binding_in_the_env():
    config = load_config({
        "models": [{"id": "m", "source": "/models/m"}],
        "pools": [{"name": "gov", "accelerator": "cpu", "models": ["m"], "cpu_threads_bind": "2-3",
                   "cpu_nice": 0},
                  {"name": "gpu-pool", "accelerator": "gpu", "models": ["m"]}]})
    cpu = llm_config_for(config.pools[0], config.model("m"), "/models/m")
    assert cpu.placement_group_config["bundle_per_worker"] == {"CPU": 1, "pool_gov": 0.001}
    assert cpu.runtime_env["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] == "2-3"
    assert cpu.runtime_env["env_vars"]["FABRIEK_POOL_CPU_NICE"] == "0"
    gpu = llm_config_for(config.pools[1], config.model("m"), "/models/m")
    assert gpu.placement_group_config["bundle_per_worker"] == {"GPU": 1, "pool_gpu-pool": 0.001}
    assert not {"VLLM_CPU_OMP_THREADS_BIND", "FABRIEK_POOL_CPU_NICE"} & set(gpu.runtime_env["env_vars"])


def test_engines_bound_a_request_past_the_longest_limit_of_their_classes():
    from serving.engine.engines import ENGINE_TIME_LIMIT_GRACE_S, engine_time_limit_s
    from serving.engine.llm_server import MAX_REQUEST_S_KEY

    config = load_config("serving/configs/local-cpu.yaml")
    limit = engine_time_limit_s(config, "government")
    assert limit == config.classes["government"].max_request_s + ENGINE_TIME_LIMIT_GRACE_S
    pool = config.pools[0]
    llm_config = llm_config_for(pool, config.model(pool.models[0]), "/models/m", limit)
    assert llm_config.experimental_configs[MAX_REQUEST_S_KEY] == limit

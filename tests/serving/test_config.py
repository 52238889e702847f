"""The platform config schema: what it accepts, and how it explains what it refuses."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from serving.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, with_overrides

VALID = {
    "models": [{"id": "m", "source": "/models/m", "engine_args": {"dtype": "bfloat16"}}],
    "pools": [{"name": "gov", "accelerator": "gpu", "models": ["m"],
               "engine_args": {"max_num_seqs": 8},
               "deployment": {"num_replicas": 2, "ray_actor_options": {"resources": {"pool_gov": 1}}}}],
}


def with_change(path: str, value):
    """VALID with the dotted `path` set to `value` (list indices as numbers)."""
    config = copy.deepcopy(VALID)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


def test_shipped_cpu_config_is_valid():
    config = load_config(DEFAULT_CONFIG_PATH)
    assert [m.id for m in config.models] == ["smollm2-135m-instruct"]
    assert config.pools[0].accelerator == "cpu"
    assert config.http.port == 8000


def test_no_argument_loads_the_shipped_config():
    assert load_config() == load_config(DEFAULT_CONFIG_PATH)


def test_valid_config_loads_from_yaml(tmp_path):
    import yaml

    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(VALID))
    config = load_config(path)
    assert config.pools[0].deployment["num_replicas"] == 2


def test_config_is_frozen():
    config = load_config(VALID)
    with pytest.raises(ValidationError):
        config.http.port = 1


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("models.0.source", "HuggingFaceTB/SmolLM2-135M-Instruct", "never downloads from a model hub"),
    ("models.0.source", "models/relative", "neither a local path nor an object-store URI"),
    ("models.0.engine_args", {"dtpye": "bfloat16"}, "unknown vLLM engine argument(s) ['dtpye']"),
    ("models.0.engine_args", {"model": "/x"}, "set by fabriek"),
    ("pools.0.engine_args", {"max_num_seqz": 1}, "pools[0].engine_args: unknown vLLM engine argument"),
    ("pools.0.deployment", {"num_replicaz": 1}, "unknown Ray Serve deployment option(s) ['num_replicaz']"),
    ("pools.0.deployment", {"ray_actor_options": {"num_cpuz": 1}}, "ray_actor_options.num_cpuz"),
    ("pools.0.deployment", {"num_replicas": "many"}, "num_replicas"),
    ("pools.0.deployment", {"name": "x"}, "['name'] are set by fabriek"),
    ("pools.0.deployment", {"ray_actor_options": 5}, "ray_actor_options must be a mapping"),
    ("pools.0.models", ["other"], "pools[gov].models[0]: unknown model 'other'"),
    ("pools.0.name", "Gov Pool", "lowercase"),
    ("pools.0.accelerator", "tpu", "pools[0].accelerator"),
    ("http", {"port": 70000}, "http.port"),
    ("http", {"max_request_bytes": 10}, "http.max_request_bytes"),
    ("surprise", 1, "surprise: Extra inputs are not permitted"),
])
def test_invalid_config_names_the_path_and_problem(path, value, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(with_change(path, value))
    assert expected in str(raised.value)


def test_model_served_by_no_pool_is_refused():
    config = copy.deepcopy(VALID)
    config["models"].append({"id": "orphan", "source": "/models/orphan"})
    with pytest.raises(ConfigError, match=r"models\[orphan\]: no pool serves it"):
        load_config(config)


def test_duplicate_model_ids_are_refused():
    config = copy.deepcopy(VALID)
    config["models"].append(dict(config["models"][0]))
    with pytest.raises(ConfigError, match="'m' appears twice"):
        load_config(config)


@pytest.mark.parametrize("source", ["fabriek://smollm2-135m-instruct", "/abs/path", "./rel", "~/models/x",
                                    "s3://bucket/model", "gs://bucket/model"])
def test_accepted_model_sources(source):
    assert load_config(with_change("models.0.source", source)).models[0].source == source


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)


def test_model_lookup_raises_key_error_for_unknown_ids():
    with pytest.raises(KeyError):
        load_config(VALID).model("absent")


def test_overrides_are_validated():
    config = load_config(VALID)
    assert with_overrides(config, http_port=9001, dashboard_port=9002).http.port == 9001
    with pytest.raises(ConfigError, match="http.port"):
        with_overrides(config, http_port=0)


@pytest.mark.parametrize(("serve", "expected"), [
    ({}, {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
          "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "30.0",
          "RAY_SERVE_HAPROXY_STATS_PORT": "8404", "RAY_SERVE_HAPROXY_METRICS_PORT": "9101"}),
    ({"proxy": "ray", "throughput_optimized": False, "drain_period_s": 2, "haproxy_stats_port": 18404},
     {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
      "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2.0",
      "RAY_SERVE_HAPROXY_STATS_PORT": "18404", "RAY_SERVE_HAPROXY_METRICS_PORT": "9101"}),
])
def test_serve_runtime_becomes_ray_environment(serve, expected):
    assert load_config({**VALID, "serve": serve}).serve.ray_env() == expected


def test_unknown_proxy_is_refused():
    with pytest.raises(ConfigError, match="serve.proxy"):
        load_config({**VALID, "serve": {"proxy": "nginx"}})

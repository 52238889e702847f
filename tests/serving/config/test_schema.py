"""The platform config schema: what it accepts, and how it explains what it refuses."""

from __future__ import annotations

import copy

from pathlib import Path

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
    assert [m.id for m in config.models] == ["smollm2-135m-instruct", "multilingual-e5-small"]
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
    ("pools.0.engine_args", {"enable_log_requests": True}, "would log request content"),
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
    ("local", {"system_cpus": "one"}, "local.system_cpus"),
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
    assert with_overrides(config, grpc_port=9100).grpc.port == 9100
    with pytest.raises(ConfigError, match="grpc.port"):
        with_overrides(config, grpc_port=70000)


def test_grpc_options_are_what_ray_serve_takes_and_can_import():
    from ray.serve.config import gRPCOptions

    config = load_config(VALID)
    assert config.grpc.port == 9000
    options = gRPCOptions(**config.grpc.ray_options())
    assert options.port == 9000
    [add_servicer] = options.grpc_servicer_func_callable  # imported as Ray's proxy imports it
    assert add_servicer.__name__ == "add_inference_service"


def test_serve_config_file_serves_grpc_with_the_same_servicer():
    import yaml

    from serving.config import GrpcSpec

    serve_config = yaml.safe_load((Path(__file__).parents[3] / "deploy" / "serve-config.yaml").read_text())
    assert serve_config["grpc_options"] == {"port": 9000, "grpc_servicer_functions": [GrpcSpec.SERVICER_FUNCTION]}


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


def test_grpc_messages_are_held_to_the_http_body_limit():
    env = load_config({**VALID, "http": {"max_request_bytes": 65536}}).ray_env()
    assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == "65536"


def test_unknown_proxy_is_refused():
    with pytest.raises(ConfigError, match="serve.proxy"):
        load_config({**VALID, "serve": {"proxy": "nginx"}})


TENANCY = {
    **VALID,
    "pools": [*VALID["pools"], {"name": "biz", "accelerator": "gpu", "models": ["m"]}],
    "classes": {"government": {"pools": ["gov"]}, "commercial": {"pools": ["biz"]}},
    "tenants": [{"id": "gov-demo", "class": "government", "models": ["m"]},
                {"id": "pilot-demo", "class": "commercial", "models": ["m"]}],
}


def tenancy_with(**changes):
    config = copy.deepcopy(TENANCY)
    config.update(changes)
    return config


def test_shipped_config_has_two_isolated_pools_and_two_demo_tenants():
    config = load_config(DEFAULT_CONFIG_PATH)
    assert [(p.name, p.cpu_threads_bind) for p in config.pools] == [("government", "0"), ("government-embeddings", "0"),
                                                                       ("commercial", "1")]
    tenancy = config.tenancy()
    assert {t: str(tenancy.tenants[t].tenant_class) for t in tenancy.tenants} == {
        "gov-demo": "government", "pilot-demo": "commercial"}
    assert tenancy.pools_for(tenancy.tenants["gov-demo"]) == {"government", "government-embeddings"}
    assert tenancy.pools_for(tenancy.tenants["pilot-demo"]) == {"commercial"}


def test_tenancy_config_round_trips_through_dump_and_overrides():
    config = load_config(TENANCY)
    assert load_config(config.model_dump(by_alias=True)) == config
    assert with_overrides(config, http_port=9000).tenancy() == config.tenancy()


@pytest.mark.parametrize(("changes", "expected"), [
    ({"classes": {"government": {"pools": ["nope"]}, "commercial": {"pools": ["biz"]}}},
     "classes[government].pools[0]: unknown pool 'nope'"),
    ({"classes": {"government": {"pools": ["gov"]}}},
     "tenants[pilot-demo].class: no entry for class 'commercial'"),
    ({"tenants": [{"id": "gov-demo", "class": "government", "models": ["x"]}]},
     "tenants[gov-demo].models[0]: 'x' is served by no pool of class 'government'"),
    ({"tenants": [{"id": "a", "class": "spy", "models": ["m"]}]}, "tenants[0].class"),
    ({"tenants": [{"id": "Gov Demo", "class": "government", "models": ["m"]}]}, "tenants[0].id"),
    ({"tenants": [{"id": "a", "class": "government", "models": ["m"]}] * 2}, "tenants: 'a' appears twice"),
    ({"classes": {"government": {"pools": ["gov"], "priority": 3}, "commercial": {"pools": ["biz"]}}},
     "classes[government].priority: pool 'gov' must set engine argument `scheduling_policy: priority`"),
    ({"classes": {"research": {"pools": []}}}, "classes.research.pools"),
    ({"auth": {"key_reload_interval_s": 0}}, "auth.key_reload_interval_s"),
    ({"auth": {"keyfile": "/x"}}, "auth.keyfile"),
])
def test_invalid_tenancy_names_the_path(changes, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(tenancy_with(**changes))
    assert expected in str(raised.value)


@pytest.mark.parametrize(("setting", "value", "accelerator", "expected"), [
    ("cpu_threads_bind", "0", "cpu", None), ("cpu_threads_bind", "0-3,8", "cpu", None),
    ("cpu_threads_bind", "0-1|2-3", "cpu", None), ("cpu_threads_bind", "auto", "cpu", None),
    ("cpu_threads_bind", "zero", "cpu", "not a CPU list"), ("cpu_threads_bind", "0;1", "cpu", "not a CPU list"),
    ("cpu_threads_bind", "0", "gpu", "cpu_threads_bind applies to accelerator `cpu` only"),
    ("cpu_nice", 0, "cpu", None), ("cpu_nice", 19, "cpu", None), ("cpu_nice", -20, "cpu", None),
    ("cpu_nice", 20, "cpu", "less than or equal to 19"), ("cpu_nice", "high", "cpu", "valid integer"),
    ("cpu_nice", 0, "gpu", "cpu_nice applies to accelerator `cpu` only"),
])
def test_cpu_pool_settings(setting, value, accelerator, expected):
    config = with_change(f"pools.0.{setting}", value)
    config["pools"][0]["accelerator"] = accelerator
    if expected is None:
        assert getattr(load_config(config).pools[0], setting) == value
    else:
        with pytest.raises(ConfigError, match=expected):
            load_config(config)


def test_auth_paths_default_under_fabriek_home_per_domain(tmp_path, monkeypatch):
    monkeypatch.setenv("FABRIEK_HOME", str(tmp_path))
    auth = load_config(VALID).auth
    assert auth.resolved_key_file("government") == tmp_path / "domains/government/api-keys.json"
    assert auth.resolved_cache_salt_secret_file("commercial") == tmp_path / "domains/commercial/cache-salt.secret"
    explicit = load_config({**VALID, "auth": {"key_file": str(tmp_path / "{domain}-k.json")}}).auth
    assert explicit.resolved_key_file("research") == tmp_path / "research-k.json"

"""The Serve import path: a Ray Serve config file builds the fabriek application."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.deployment import Application
from ray.serve.schema import ServeDeploySchema

from serving.app import build_app, build_power_app
from serving.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from serving.engine.engines import engine_deployments
from serving.frontdoor.front_door import FrontDoorSettings

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


def test_serve_config_file_is_one_domains_cluster_and_builds_it(monkeypatch):
    monkeypatch.chdir(REPO)  # config_path in the file is relative to the repo
    schema = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deploy/serve-config.yaml").read_text()))
    domains = [d.name for d in load_config(DEFAULT_CONFIG_PATH).domains()]
    # The domain's application, and its own power governor's, off HTTP: nothing of another domain.
    assert [(a.name, a.route_prefix, a.args.get("domain")) for a in schema.applications] == \
        [(domains[0], f"/{domains[0]}", domains[0]), ("fabriek-power", None, domains[0])]
    for app_schema in schema.applications:
        module, attr = app_schema.import_path.split(":")
        builder = getattr(__import__(module, fromlist=[attr]), attr)
        assert isinstance(builder(app_schema.args), Application)


def test_builder_takes_the_config_inline():
    inline = load_config(DEFAULT_CONFIG_PATH).model_dump()
    assert isinstance(build_app({"config": inline, "domain": "government"}), Application)


def test_builder_needs_a_domain_when_there_are_several():
    inline = load_config(DEFAULT_CONFIG_PATH).model_dump()
    with pytest.raises(ValueError, match=r"isolation domains \['government', 'commercial'\]; pass `domain`"):
        build_app({"config": inline})
    with pytest.raises(ConfigError, match="no isolation domain 'research'"):
        build_app({"config": inline, "domain": "research"})


def _bound(app: Application) -> tuple[tuple, dict]:
    return app._bound_deployment.init_args, app._bound_deployment.init_kwargs


def _relay_config() -> dict:
    inline = load_config(DEFAULT_CONFIG_PATH).model_dump()
    inline["serve"]["token_path"] = "relay"
    return inline


def _front_door_of(app: Application) -> tuple[set[str], FrontDoorSettings, Application]:
    """(the pools its engines serve, its settings, its admission controller), either layout."""
    args, kwargs = _bound(app)
    if app._bound_deployment.func_or_class.__name__ == "OpenAIIngress":
        return {route.pool for route in args[0]}, kwargs["settings"], kwargs["admission_controller"]
    others = {route.pool for route in (kwargs.get("other_engines") or {})}
    return {kwargs["pool"], *others}, kwargs["front_door"], kwargs["admission_controller"]


# The shipped config's pools per domain (government's document search has a pool of its own).
OWN_POOLS = {"government": {"government", "government-embeddings"}, "commercial": {"commercial"}}


@pytest.mark.parametrize("layout", ["direct", "relay"])
def test_a_domains_app_holds_only_its_own_tenants_pools_and_secrets(layout):
    from serving.config import fabriek_home

    home = fabriek_home().resolve()
    for domain, other in (("government", "commercial"), ("commercial", "government")):
        app = build_app({"domain": domain, **({"config": _relay_config()} if layout == "relay" else {})})
        pools, settings, controller = _front_door_of(app)
        assert app._bound_deployment.name == (f"{domain}--{MODEL}" if layout == "direct" else "OpenAIIngress")
        assert pools == OWN_POOLS[domain]
        assert settings.domain == domain
        assert settings.key_file == home / "domains" / domain / "api-keys.json"
        assert settings.cache_salt_secret_file == home / "domains" / domain / "cache-salt.secret"
        tenancy = settings.tenancy
        assert {str(t.tenant_class) for t in tenancy.tenants.values()} == {domain}
        assert set(tenancy.classes) == {domain}
        assert set(settings.quotas) == set(tenancy.tenants)
        controller_args, _ = _bound(controller)
        assert set(controller_args[0]) == set(tenancy.tenants)  # quotas: its own tenants only
        assert {route.pool for route in controller_args[1]} == OWN_POOLS[domain]
        # Nothing anywhere in what the domain's processes are given names the other domain.
        assert f"domains/{other}" not in repr(_bound(app))


def test_a_domain_with_two_routes_keeps_the_relay_front_door():
    inline = load_config(DEFAULT_CONFIG_PATH).model_dump()
    inline["models"].append({**inline["models"][0], "id": "second-model"})
    inline["pools"][0]["models"].append("second-model")
    inline["tenants"][0]["models"].append("second-model")
    government = build_app({"config": inline, "domain": "government"})
    assert government._bound_deployment.name == "OpenAIIngress"
    pools, settings, _ = _front_door_of(government)
    assert set(settings.model_cards) == {MODEL, "second-model", "multilingual-e5-small"}
    assert build_app({"config": inline, "domain": "commercial"})._bound_deployment.name == f"commercial--{MODEL}"


def test_front_door_is_placed_on_its_domains_nodes_and_cores():
    for domain, core, nice in (("government", 0, 0), ("commercial", 1, 15)):
        # direct: the engine replica is the front door, on the pool's nodes and cores, at the
        # front door's niceness.
        engine = build_app({"domain": domain})._bound_deployment
        assert engine.init_kwargs["cpu_nice"] == nice
        bundles = engine._replica_config.placement_group_bundles
        assert all(b.get(f"pool_{domain}", 0) > 0 for b in bundles)
        assert engine._replica_config.ray_actor_options["runtime_env"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] \
            == str(core)
        # relay: an ingress of its own, on the domain's nodes and its pools' cores.
        app = build_app({"domain": domain, "config": _relay_config()})
        _, kwargs = _bound(app)
        assert (kwargs["cores"], kwargs["cpu_nice"]) == (frozenset({core}), nice)
        for application in (app, kwargs["admission_controller"], _bound(build_app({"domain": domain}))[1][
                "admission_controller"]):
            resources = application._bound_deployment._replica_config.ray_actor_options["resources"]
            assert resources == {f"domain_{domain}": 0.001}
        assert _bound(kwargs["admission_controller"])[1] == {"cores": frozenset({core}), "cpu_nice": nice}


def test_the_direct_front_door_reaches_its_domains_embedding_engine_over_a_handle():
    app = build_app({"domain": "government"})
    assert app._bound_deployment.name == f"government--{MODEL}"
    _, kwargs = _bound(app)
    [(route, embedding)] = kwargs["other_engines"].items()
    assert (route.pool, route.model_id) == ("government-embeddings", "multilingual-e5-small")
    assert embedding._bound_deployment.name == "government-embeddings--multilingual-e5-small"
    assert kwargs["front_door"].embedding_models == {"multilingual-e5-small"}
    assert _bound(build_app({"domain": "commercial"}))[1]["other_engines"] == {}


def test_builder_refuses_unknown_or_conflicting_args():
    with pytest.raises(ValueError, match="`config` or `config_path`"):
        build_app({"config_file": "x.yaml"})
    with pytest.raises(ValueError, match="`config` or `config_path`"):
        build_app({"config": {}, "config_path": "x.yaml"})


def test_one_model_on_two_pools_gives_two_deployments_pinned_to_their_pool():
    engines = engine_deployments(load_config(DEFAULT_CONFIG_PATH))
    assert [(e.pool, e.model_id) for e in engines if not e.is_embedding] == [("government", MODEL),
                                                                              ("commercial", MODEL)]
    for engine, core in zip(engines, ["0", "0", "1"]):
        deployment = engine.bind()._bound_deployment
        assert deployment.name == f"{engine.pool}--{engine.model_id}"
        # Every bundle, the replica's included, needs the pool's resource: nothing of the
        # pool can be placed on another pool's nodes.
        bundles = deployment._replica_config.placement_group_bundles
        assert bundles and all(b.get(f"pool_{engine.pool}", 0) > 0 for b in bundles)
        assert not any(k.startswith("pool_") and k != f"pool_{engine.pool}" for b in bundles for k in b)
        env = deployment._replica_config.ray_actor_options["runtime_env"]["env_vars"]
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == core


@pytest.mark.parametrize(("domain", "pools"), [("government", {"government", "government-embeddings"}),
                                               ("commercial", {"commercial"})])
def test_each_domains_power_governor_governs_its_own_pools_only(domain, pools):
    inline = load_config(DEFAULT_CONFIG_PATH).model_dump()
    inline["power_caps"] = [{"name": "grid", "watts": "1kW", "scope": "platform"},
                            {"name": "pilots", "watts": "300W", "scope": "domain:commercial"}]
    args, kwargs = _bound(build_power_app({"config": inline, "domain": domain}))
    specs, domains, scopes, caps = args
    assert {s.pool for s in specs} == pools and set(domains) == {domain}
    assert all(scope_pools <= pools for scope_pools in scopes.values())
    # Its share of the platform cap (half each, nothing measured yet), and its own caps only.
    assert {(c.name, c.watts) for c in caps} == ({("grid", 500.0)} if domain == "government"
                                                 else {("grid", 500.0), ("pilots", 300.0)})
    with pytest.raises(ValueError, match="pass `domain`"):
        build_power_app({"config": inline})

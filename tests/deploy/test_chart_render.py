"""The chart lints and renders for every value set; every object is valid; every domain's app builds."""

from __future__ import annotations

import functools
import json

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray.serve.deployment import Application
from ray.serve.schema import ServeDeploySchema

from serving.config import load_config
from serving.config.domains import domain_resource
from tests.deploy.conftest import (
    CHART,
    REPO,
    VALUE_SETS,
    by_kind,
    is_head,
    pod_groups,
    rayservices,
    serve_config,
)

KUBERAY_CRDS = REPO.parent / "shared" / "kuberay-crds-v1.7.0"
# The Kubernetes version the objects are checked against (kubectl's in the helm package).
KUBERNETES_VERSION = "1.34"
# Objects of CRDs whose schemas are not at hand here: the RayService is checked against
# KubeRay's CRD below; the Prometheus operator's monitors only by rendering.
NOT_CORE = {"RayService", "ServiceMonitor", "PodMonitor"}
# Every switch on: Ingress, both monitors and the rest render too.
ALL_ON = {"ingress": {"enabled": True, "host": "api.facility.example",
                      "tls": [{"hosts": ["api.facility.example"], "secretName": "api-tls"}]},
          "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
          "secret": {"domains": {"commercial": {"usageDatabaseUrl": "postgresql://usage@db/usage"}}},
          "networkPolicy": {"ledgerEgress": [{"ipBlock": {"cidr": "10.20.0.5/32"}}],
                            "modelStoreEgress": [{"ipBlock": {"cidr": "10.30.0.0/24"}}],
                            "extraEgress": [{"to": [{"namespaceSelector": {"matchLabels": {
                                "kubernetes.io/metadata.name": "monitoring"}}}],
                                "ports": [{"port": 4317, "protocol": "TCP"}]}]}}


def platform(objects):
    """The platform config every domain's app gets (the same for all), validated."""
    return load_config(serve_config(objects)["applications"][0]["args"]["config"])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_passes(helm, name):
    result = helm.run("lint", "--strict", str(CHART), values=VALUE_SETS[name])
    assert result.returncode == 0, result.stdout + result.stderr


def test_renders_the_expected_objects(rendered):
    _, _, objects = rendered
    config = platform(objects)
    domains, pools = len(config.domains()), len(config.pools)
    kinds = sorted(o["kind"] for o in objects)
    # Per domain a RayService (its own Ray cluster), its Secret and its Ray token's Secret, three
    # Services (HTTP, gRPC, dashboard) and two NetworkPolicies (head, workers); the
    # default-deny policy and the ServiceAccount; per pool a disruption budget.
    assert kinds == sorted(["ServiceAccount", "NetworkPolicy"] + ["RayService"] * domains + ["Secret"] * 2 * domains
                           + ["Service"] * 3 * domains + ["NetworkPolicy"] * 2 * domains
                           + ["PodDisruptionBudget"] * pools)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_core_object_is_valid_kubernetes(helm, name):
    objects = helm.template(_deep_merge(VALUE_SETS[name], ALL_ON))
    for obj in objects:
        if obj["kind"] in NOT_CORE:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    # The pod templates inside the RayServices are core objects too.
    for group in pod_groups(objects).values():
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                        "template": group["template"]}
        kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


@functools.cache
def _crd_schema(kind_file: str) -> dict:
    crd = yaml.safe_load((KUBERAY_CRDS / kind_file).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_rayservice_is_valid_for_kuberay_1_7(rendered):
    if not KUBERAY_CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not at {KUBERAY_CRDS} (the shared/ folder beside the repo)")
    schema = _crd_schema("ray.io_rayservices.yaml")
    validator = jsonschema.Draft7Validator(schema)
    for service in rayservices(rendered[2]).values():
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(service)]
        assert not errors, "\n".join(errors)


def test_serve_config_passes_ray_serves_schema_and_builds_every_domains_app(rendered):
    from serving.app import route_prefix

    name, _, objects = rendered
    domains = [d.name for d in platform(objects).domains()]
    assert list(rayservices(objects)) == domains
    applications = []
    for domain in domains:
        schema = ServeDeploySchema.model_validate(serve_config(objects, domain))
        assert schema.http_options.port == 8000 and schema.grpc_options.port == 9000
        # The domain's application, as serving/app.py's builder takes it, and its own power governor's.
        assert [(a.name, a.route_prefix, a.import_path, a.args.get("domain")) for a in schema.applications] == [
            (domain, route_prefix(domain), "serving.app:build_app", domain),
            ("fabriek-power", None, "serving.app:build_power_app", domain)]
        applications += schema.applications
    if name == "local-cpu":
        from serving.engine.default_model import builtin_models, prepare_builtin_model

        for builtin in builtin_models():
            prepare_builtin_model(builtin, show_progress=False)
    try:
        for app in applications:
            module, attr = app.import_path.split(":")
            builder = getattr(__import__(module, fromlist=[attr]), attr)
            # Built as the Serve controller builds it, without starting engines.
            assert isinstance(builder(app.args), Application), app.name
    finally:
        ray.shutdown()  # Ray Serve LLM's builder starts a local Ray instance


def test_serve_config_holds_the_values_platform_config(rendered):
    _, values, objects = rendered
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["platform"]
    expected = _helm_merge(defaults, values.get("platform", {}))
    expected["auth"] = {**expected.get("auth", {}), "key_file": "/etc/fabriek/secrets/{domain}/api-keys.json",
                        "cache_salt_secret_file": "/etc/fabriek/secrets/{domain}/cache-salt.secret"}
    # One source of truth: every app gets the values' config; only the Secret paths are the chart's.
    for app in serve_config(objects)["applications"]:
        assert load_config(app["args"]["config"]) == load_config(expected), app["name"]


def _deep_merge(base: dict, override: dict) -> dict:
    """Two values files in one: maps merge, the rest (nulls included) is overridden."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (_deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict)
                       else value)
    return merged


def _helm_merge(defaults: dict, override: dict) -> dict:
    """Helm's merge of user values over values.yaml: maps merge, null deletes, the rest replaces."""
    merged = dict(defaults)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_one_worker_group_per_pool_with_its_pool_and_domain_resources_and_gpus(rendered):
    name, _, objects = rendered
    config = platform(objects)
    domain_of = {p: d.name for d in config.domains() for p in d.pools}
    groups = {g: spec for g, spec in pod_groups(objects).items() if not is_head(g)}
    assert sorted(groups) == sorted(p.name for p in config.pools)
    for pool in config.pools:
        group = groups[pool.name]
        params = group["rayStartParams"]
        # KubeRay passes the value to `ray start --resources` through a shell: a quoted JSON.
        # The pool's engines ask for the first, its domain's front door for the second.
        assert json.loads(json.loads(params["resources"])) == {pool.ray_resource: 1,
                                                               domain_resource(domain_of[pool.name]): 1}
        [container] = group["template"]["spec"]["containers"]
        gpus = int(params["num-gpus"])
        assert (gpus > 0) == (pool.accelerator == "gpu")
        assert container["resources"].get("limits", {}).get("nvidia.com/gpu", 0) == gpus
        assert group["template"]["metadata"]["labels"]["fabriek.ai/pool"] == pool.name
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for service in rayservices(objects).values():
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
        assert head["rayStartParams"]["num-gpus"] == "0" and "resources" not in head["rayStartParams"]
        assert "nvidia.com/gpu" not in json.dumps(head["template"]["spec"]["containers"][0]["resources"])
    if name == "facility-default":
        gov = groups["government"]["template"]["spec"]
        assert gov["nodeSelector"]["fabriek.ai/pool"] == "government"
        assert {"key": "fabriek.ai/pool", "operator": "Equal", "value": "government",
                "effect": "NoSchedule"} in gov["tolerations"]


def test_ray_environment_is_what_fabriek_config_ray_env_prints(rendered):
    _, _, objects = rendered
    config = platform(objects)
    for group in pod_groups(objects).values():
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        for name, value in config.ray_env().items():
            assert float(env[name]) == float(value), name


def test_pods_run_unprivileged(rendered):
    _, _, objects = rendered
    for group in pod_groups(objects).values():
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_each_domains_generated_secret_holds_an_empty_key_file_and_its_own_salt(rendered):
    _, _, objects = rendered
    domains = [d.name for d in platform(objects).domains()]
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind(objects, "Secret")}
    assert set(secrets) == {f"fab-fabriek-{d}" for d in domains} | {f"fab-fabriek-{d}-ray" for d in domains}
    salts = set()
    for domain in domains:
        data = secrets[f"fab-fabriek-{domain}"]
        assert json.loads(data["api-keys.json"]) == {"version": 1, "keys": []}
        assert len(bytes.fromhex(data["cache-salt.secret"])) >= 32  # routers/cache_salt.py's minimum
        assert "usage-database-url" not in data and "auth_token" not in data
        salts.add(data["cache-salt.secret"])
    assert len(salts) == len(domains)  # no two domains share a salt
    # Each domain's Ray token Secret holds its cluster's token only, and no two are alike.
    assert all(set(secrets[f"fab-fabriek-{d}-ray"]) == {"auth_token"} for d in domains)
    assert len({secrets[f"fab-fabriek-{d}-ray"]["auth_token"] for d in domains}) == len(domains)


def test_services_expose_each_domains_http_and_grpc_and_an_internal_dashboard(rendered):
    _, _, objects = rendered
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(objects, "Service")}
    for domain in platform(objects).domains():
        assert services[f"fab-fabriek-{domain.name}-http"]["ports"][0]["port"] == 8000
        assert services[f"fab-fabriek-{domain.name}-grpc"]["ports"][0]["port"] == 9000
        dashboard = services[f"fab-fabriek-{domain.name}-dashboard"]
        assert dashboard["ports"][0]["port"] == 8265 and dashboard["type"] == "ClusterIP"
        assert dashboard["selector"]["app.kubernetes.io/component"] == "head"
        assert dashboard["selector"]["fabriek.ai/domain"] == domain.name
    assert "fab-fabriek-http" not in services and "fab-fabriek-grpc" not in services
    assert "fab-fabriek-dashboard" not in services


def test_network_policies_open_only_the_api_ports_to_any_client(rendered):
    _, _, objects = rendered
    for policy in by_kind(objects, "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        open_to_all = [r for r in policy["spec"].get("ingress", []) if "from" not in r]
        # Everything else comes from named peers: the domain's own pods, the head, the
        # operator, Prometheus.
        assert [sorted(p["port"] for p in r["ports"]) for r in open_to_all] in ([], [[8000, 9000]])


def test_notes_give_each_domains_base_url_and_grpc_application(helm):
    notes = helm.notes()
    for domain in ("government", "commercial"):
        assert f"http://fab-fabriek-{domain}-http.fabriek.svc:8000/{domain}/v1" in notes
        assert f"fab-fabriek-{domain}-grpc.fabriek.svc:9000 with metadata `application: {domain}`" in notes
        assert f"port-forward svc/fab-fabriek-{domain}-dashboard 8265" in notes
        assert f"get secret fab-fabriek-{domain}-ray" in notes
    assert "port 8080 (/metrics)" in notes

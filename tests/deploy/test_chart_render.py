"""The chart lints and renders for both value sets; every object is valid; the serve config builds."""

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
from tests.deploy.conftest import CHART, REPO, VALUE_SETS, by_kind

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
          "secret": {"usageDatabaseUrl": "postgresql://usage@db/usage"}}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request, helm):
    """(value set name, its values, the rendered objects)."""
    values = VALUE_SETS[request.param]
    return request.param, values, helm.template(values)


def rayservice(objects):
    [service] = by_kind(objects, "RayService")
    return service


def serve_config(objects) -> dict:
    return yaml.safe_load(rayservice(objects)["spec"]["serveConfigV2"])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_passes(helm, name):
    result = helm.run("lint", "--strict", str(CHART), values=VALUE_SETS[name])
    assert result.returncode == 0, result.stdout + result.stderr


def test_renders_the_expected_objects(rendered):
    _, _, objects = rendered
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["RayService", "Secret", "ServiceAccount", "Service", "Service", "Service",
                            "NetworkPolicy", "PodDisruptionBudget", "PodDisruptionBudget"])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_core_object_is_valid_kubernetes(helm, name):
    objects = helm.template({**VALUE_SETS[name], **ALL_ON})
    for obj in objects:
        if obj["kind"] in NOT_CORE:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    # The pod templates inside the RayService are core objects too.
    cluster = rayservice(objects)["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
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
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(
        rayservice(rendered[2]))]
    assert not errors, "\n".join(errors)


def test_serve_config_passes_ray_serves_schema_and_builds_the_app(rendered, monkeypatch, tmp_path):
    name, _, objects = rendered
    schema = ServeDeploySchema.model_validate(serve_config(objects))
    assert schema.http_options.port == 8000 and schema.grpc_options.port == 9000
    [app] = schema.applications
    assert (app.name, app.import_path, app.route_prefix) == ("fabriek", "serving.app:build_app", "/")
    if name == "local-cpu":
        from serving.engine.default_model import prepare_default_model

        prepare_default_model(show_progress=False)
    module, attr = app.import_path.split(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    try:
        # Built as the Serve controller builds it, without starting engines.
        assert isinstance(builder(app.args), Application)
    finally:
        ray.shutdown()  # Ray Serve LLM's builder starts a local Ray instance


def test_serve_config_holds_the_values_platform_config(rendered):
    _, values, objects = rendered
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["platform"]
    expected = _helm_merge(defaults, values.get("platform", {}))
    expected["auth"] = {**expected.get("auth", {}), "key_file": "/etc/fabriek/secret/api-keys.json",
                        "cache_salt_secret_file": "/etc/fabriek/secret/cache-salt.secret"}
    # One source of truth: the app gets the values' config; only the Secret paths are the chart's.
    config = serve_config(objects)["applications"][0]["args"]["config"]
    assert load_config(config) == load_config(expected)


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


def test_one_worker_group_per_pool_with_its_pool_resource_and_gpus(rendered):
    name, values, objects = rendered
    cluster = rayservice(objects)["spec"]["rayClusterConfig"]
    config = load_config(serve_config(objects)["applications"][0]["args"]["config"])
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert list(groups) == [p.name for p in config.pools]
    for pool in config.pools:
        group = groups[pool.name]
        params = group["rayStartParams"]
        # KubeRay passes the value to `ray start --resources` through a shell: a quoted JSON.
        assert json.loads(json.loads(params["resources"])) == {pool.ray_resource: 1}
        [container] = group["template"]["spec"]["containers"]
        gpus = int(params["num-gpus"])
        assert (gpus > 0) == (pool.accelerator == "gpu")
        assert container["resources"].get("limits", {}).get("nvidia.com/gpu", 0) == gpus
        assert group["template"]["metadata"]["labels"]["fabriek.ai/pool"] == pool.name
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in json.dumps(head["template"]["spec"]["containers"][0]["resources"])
    if name == "facility-default":
        gov = groups["government"]["template"]["spec"]
        assert gov["nodeSelector"]["fabriek.ai/pool"] == "government"
        assert {"key": "fabriek.ai/pool", "operator": "Equal", "value": "government",
                "effect": "NoSchedule"} in gov["tolerations"]


def test_ray_environment_is_what_fabriek_config_ray_env_prints(rendered):
    _, _, objects = rendered
    config = load_config(serve_config(objects)["applications"][0]["args"]["config"])
    cluster = rayservice(objects)["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        for name, value in config.serve.ray_env().items():
            assert float(env[name]) == float(value), name


def test_pods_run_unprivileged_and_mount_the_secret_read_only(rendered):
    _, _, objects = rendered
    cluster = rayservice(objects)["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "fabriek-secret"]
        assert mount["readOnly"] is True and mount["mountPath"] == "/etc/fabriek/secret"


def test_the_generated_secret_holds_an_empty_key_file_and_a_valid_salt(rendered):
    _, _, objects = rendered
    [secret] = by_kind(objects, "Secret")
    data = secret["stringData"]
    assert json.loads(data["api-keys.json"]) == {"version": 1, "keys": []}
    assert len(bytes.fromhex(data["cache-salt.secret"])) >= 32  # routers/cache_salt.py's minimum
    assert "usage-database-url" not in data


def test_services_expose_http_grpc_and_an_internal_dashboard(rendered):
    _, _, objects = rendered
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(objects, "Service")}
    assert services["fab-fabriek-http"]["ports"][0]["port"] == 8000
    assert services["fab-fabriek-grpc"]["ports"][0]["port"] == 9000
    assert services["fab-fabriek-dashboard"]["ports"][0]["port"] == 8265
    assert services["fab-fabriek-dashboard"]["type"] == "ClusterIP"
    assert services["fab-fabriek-dashboard"]["selector"]["app.kubernetes.io/component"] == "head"


def test_network_policy_opens_only_the_api_ports_to_clients(rendered):
    _, _, objects = rendered
    [policy] = by_kind(objects, "NetworkPolicy")
    rules = policy["spec"]["ingress"]
    open_to_all = [r for r in rules if "from" not in r]
    assert [sorted(p["port"] for p in r["ports"]) for r in open_to_all] == [[8000, 9000]]
    # Everything else comes from named peers: the release's own pods, the operator, Prometheus.
    assert all("from" in r for r in rules if r not in open_to_all)


def test_notes_tell_the_api_dashboard_and_metrics(helm):
    notes = helm.notes()
    assert "http://fab-fabriek-http.fabriek.svc:8000/v1" in notes
    assert "port-forward svc/fab-fabriek-dashboard 8265" in notes
    assert "port 8080 (/metrics)" in notes

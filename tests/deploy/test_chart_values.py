"""One case per values switch, bad values refused with a clear message, the schema kept current."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.deploy.conftest import CHART, REPO, by_kind, pod_groups, rayservices


def _names(objects, kind):
    return sorted(o["metadata"]["name"] for o in by_kind(objects, kind))


def _pod_specs(objects):
    return {name: group["template"]["spec"] for name, group in pod_groups(objects).items()}


def _policy(objects, name):
    [policy] = [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == name]
    return policy["spec"]


# ---- switches -------------------------------------------------------------------------

def test_ingress_enabled_routes_each_domains_path_to_its_http_service(helm):
    objects = helm.template({"ingress": {"enabled": True, "className": "nginx", "host": "api.example",
                                         "tls": [{"hosts": ["api.example"], "secretName": "api-tls"}]}})
    [ingress] = by_kind(objects, "Ingress")
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "api.example" and ingress["spec"]["ingressClassName"] == "nginx"
    assert [(p["path"], p["pathType"], p["backend"]["service"]) for p in rule["http"]["paths"]] == [
        (f"/{d}", "Prefix", {"name": f"fab-fabriek-{d}-http", "port": {"name": "http"}})
        for d in ("government", "commercial")]
    assert ingress["spec"]["tls"][0]["secretName"] == "api-tls"
    assert "https://api.example/government/v1" in helm.notes({"ingress": {"enabled": True, "host": "api.example",
                                                                         "tls": [{"hosts": ["api.example"], "secretName": "t"}]}})


def test_network_policy_disabled(helm):
    assert not by_kind(helm.template({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_network_policy_api_clients_restrict_the_api_ports(helm):
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
    objects = helm.template({"networkPolicy": {"apiClients": [peer]}})
    for domain in ("government", "commercial"):
        policy = _policy(objects, f"fab-fabriek-{domain}")
        assert all("from" in rule for rule in policy["ingress"])
        [api_rule] = [r for r in policy["ingress"] if {"port": 8000, "protocol": "TCP"} in r.get("ports", [])]
        assert api_rule["from"] == [peer]


def test_network_policy_dashboard_clients_reach_the_dashboard_and_gcs(helm):
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "platform-ops"}}}
    objects = helm.template({"networkPolicy": {"dashboardClients": [peer]}})
    for domain in ("government", "commercial"):
        head = _policy(objects, f"fab-fabriek-{domain}-head")
        [rule] = [r for r in head["ingress"] if {"port": 8265, "protocol": "TCP"} in r["ports"]]
        assert peer in rule["from"] and {"port": 6379, "protocol": "TCP"} in rule["ports"]


def test_network_policy_metrics_clients(helm):
    peer = {"podSelector": {"matchLabels": {"app": "prometheus"}}}
    objects = helm.template({"networkPolicy": {"metricsClients": [peer]}})
    for name in ("fab-fabriek-government-head", "fab-fabriek-commercial-head", "fab-fabriek-government",
                 "fab-fabriek-commercial"):
        [rule] = [r for r in _policy(objects, name)["ingress"] if r.get("ports") == [{"port": 8080, "protocol": "TCP"}]]
        assert rule["from"] == [peer]


@pytest.mark.parametrize("value", ["ledgerEgress", "modelStoreEgress"])
def test_network_policy_ledger_and_model_store_egress_from_the_domains_pods(helm, value):
    peer = {"ipBlock": {"cidr": "10.20.0.5/32"}}
    objects = helm.template({"networkPolicy": {value: [peer]}})
    for domain in ("government", "commercial"):
        assert {"to": [peer]} in _policy(objects, f"fab-fabriek-{domain}")["egress"]
    assert {"to": [peer]} not in _policy(objects, "fab-fabriek-government-head")["egress"]
    # Not set: no such rule, the egress stays closed.
    for domain in ("government", "commercial"):
        assert all(r.get("to") != [peer] for r in _policy(helm.template({}), f"fab-fabriek-{domain}")["egress"])


def test_network_policy_dns_egress(helm):
    peer = {"ipBlock": {"cidr": "169.254.20.10/32"}}
    objects = helm.template({"networkPolicy": {"dnsEgress": [peer]}})
    for name in ("fab-fabriek-government-head", "fab-fabriek-commercial-head", "fab-fabriek-government",
                 "fab-fabriek-commercial"):
        [rule] = [r for r in _policy(objects, name)["egress"] if {"port": 53, "protocol": "UDP"} in r.get("ports", [])]
        assert rule["to"] == [peer]


def test_network_policy_api_server_egress_of_the_autoscaler(helm):
    peer = {"ipBlock": {"cidr": "10.0.0.1/32"}}
    head = _policy(helm.template({"networkPolicy": {"apiServerEgress": [peer]}}), "fab-fabriek-commercial-head")
    [rule] = [r for r in head["egress"] if {"port": 6443, "protocol": "TCP"} in r.get("ports", [])]
    assert rule["to"] == [peer]
    # Without the autoscaler the head needs no Kubernetes API.
    head = _policy(helm.template({"autoscaling": {"enabled": False}}), "fab-fabriek-commercial-head")
    assert not [r for r in head["egress"] if {"port": 6443, "protocol": "TCP"} in r.get("ports", [])]


def test_network_policy_extra_egress_on_every_ray_pod(helm):
    rule = {"to": [{"ipBlock": {"cidr": "10.40.0.9/32"}}], "ports": [{"port": 4317, "protocol": "TCP"}]}
    objects = helm.template({"networkPolicy": {"extraEgress": [rule]}})
    for name in ("fab-fabriek-government-head", "fab-fabriek-commercial-head", "fab-fabriek-government",
                 "fab-fabriek-commercial"):
        assert rule in _policy(objects, name)["egress"]


def test_ray_ports_set_ray_start_and_the_policies(helm):
    ports = {"nodeManager": 7000, "objectManager": 7001, "dashboardAgentGrpc": 7002,
             "dashboardAgentListen": 7003, "minWorker": 20000, "maxWorker": 20999}
    objects = helm.template({"rayPorts": ports})
    for group in pod_groups(objects).values():
        params = group["rayStartParams"]
        assert (params["node-manager-port"], params["object-manager-port"], params["dashboard-agent-grpc-port"],
                params["dashboard-agent-listen-port"], params["min-worker-port"], params["max-worker-port"]) == (
            "7000", "7001", "7002", "7003", "20000", "20999")
    government = _policy(objects, "fab-fabriek-government")
    [from_head] = [r for r in government["ingress"] if r.get("from", [{}])[0].get("podSelector", {}).get(
        "matchLabels", {}).get("app.kubernetes.io/component") == "head"]
    assert from_head["ports"] == [{"port": p, "protocol": "TCP"} for p in (7000, 7001, 7002, 7003)] + [
        {"port": 20000, "endPort": 20999, "protocol": "TCP"}]


def test_ray_serve_proxy_without_haproxy_needs_no_fallback_proxy_ports(helm):
    objects = helm.template({"platform": {"serve": {"proxy": "ray"}}})
    to_head = [r for r in _policy(objects, "fab-fabriek-government")["egress"] if "ports" in r and "to" in r
               and {"port": 6379, "protocol": "TCP"} in r["ports"]]
    assert [{"port": 8500, "protocol": "TCP"} in r["ports"] for r in to_head] == [False]


def test_pod_disruption_budget_disabled(helm):
    assert not by_kind(helm.template({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


def test_pod_disruption_budget_max_unavailable(helm):
    budgets = by_kind(helm.template({"podDisruptionBudget": {"maxUnavailable": 2}}), "PodDisruptionBudget")
    assert [b["spec"]["maxUnavailable"] for b in budgets] == [2, 2]
    # Per pool, as before domains: a drain takes at most that many of one pool's workers.
    assert [b["spec"]["selector"]["matchLabels"]["fabriek.ai/pool"] for b in budgets] == ["government", "commercial"]


def test_service_monitor_enabled(helm):
    objects = helm.template({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    [monitor] = by_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert "fab-fabriek-metrics" in _names(objects, "Service")
    assert not by_kind(objects, "PodMonitor")


def test_pod_monitor_enabled(helm):
    objects = helm.template({"metrics": {"podMonitor": {"enabled": True, "interval": "15s"}}})
    [monitor] = by_kind(objects, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "interval": "15s"}]
    assert not by_kind(objects, "ServiceMonitor")


def test_grafana_dashboard_ships_the_committed_json(helm):
    import json

    objects = helm.template({"metrics": {"grafanaDashboard": {"enabled": True}}})
    [config_map] = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("grafana-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = (CHART / "dashboards" / "fabriek.json").read_text()
    assert json.loads(config_map["data"]["fabriek.json"]) == json.loads(committed)
    assert not [o for o in by_kind(helm.template({}), "ConfigMap") if "grafana" in o["metadata"]["name"]]


def test_tracing_sets_the_otel_environment_and_serves_tracing_config(helm):
    from serving.records.tracing import serve_tracing_config

    objects = helm.template({"tracing": {"otlpEndpoint": "http://otel-collector.monitoring:4317",
                                         "samplingRatio": 0.25}})
    serves = [yaml.safe_load(s["spec"]["serveConfigV2"]) for s in by_kind(objects, "RayService")]
    assert len(serves) == 2 and serves[0]["tracing_config"] == serves[1]["tracing_config"]
    serve = serves[0]
    for spec in _pod_specs(objects).values():
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4317"
        assert env["FABRIEK_VLLM_TRACES"] == "on"
        # The serve config says what fabriek derives from that environment: one source.
        assert serve["tracing_config"] == serve_tracing_config(
            {k: v for k, v in env.items() if v is not None}).model_dump()
    assert serve["tracing_config"]["sampling_ratio"] == 0.25


def test_vllm_spans_can_be_left_out(helm):
    from serving.records.tracing import vllm_tracing

    objects = helm.template({"tracing": {"otlpEndpoint": "http://otel-collector.monitoring:4317",
                                         "vllmSpans": False}})
    for spec in _pod_specs(objects).values():
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert vllm_tracing({k: v for k, v in env.items() if v is not None}) == ({}, {})


def test_tracing_off_by_default(helm):
    objects = helm.template({})
    for service in by_kind(objects, "RayService"):
        assert "tracing_config" not in yaml.safe_load(service["spec"]["serveConfigV2"])
    for spec in _pod_specs(objects).values():
        assert not [e for e in spec["containers"][0]["env"] if e["name"].startswith("OTEL_")]


def test_a_domains_existing_secret_is_mounted_instead_of_a_generated_one(helm):
    objects = helm.template({"secret": {"domains": {"government": {"existingSecret": "fabriek-keys-gov"}}}})
    assert _names(objects, "Secret") == ["fab-fabriek-commercial", "fab-fabriek-commercial-ray",
                                         "fab-fabriek-government-ray"]
    pods = _pod_specs(objects)
    [volume] = [v for v in pods["government"]["volumes"] if v.get("secret")]
    assert volume["secret"]["secretName"] == "fabriek-keys-gov"
    [env] = [e for e in pods["government"]["containers"][0]["env"] if e["name"] == "FABRIEK_USAGE_DATABASE_URL"]
    assert env["valueFrom"]["secretKeyRef"]["name"] == "fabriek-keys-gov"
    [volume] = [v for v in pods["commercial"]["volumes"] if v.get("secret")]
    assert volume["secret"]["secretName"] == "fab-fabriek-commercial"


def test_a_domains_api_keys_cache_salt_and_usage_database_go_into_its_secret_only(helm):
    keys = '{"version": 1, "keys": []}'
    objects = helm.template({"secret": {"domains": {"commercial": {
        "apiKeys": keys, "cacheSaltSecret": "ab" * 32, "usageDatabaseUrl": "postgresql://db/usage_commercial"}}}})
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind(objects, "Secret")}
    assert secrets["fab-fabriek-commercial"] == {"api-keys.json": keys, "cache-salt.secret": "ab" * 32,
                                                 "usage-database-url": "postgresql://db/usage_commercial"}
    assert "usage-database-url" not in secrets["fab-fabriek-government"]
    assert secrets["fab-fabriek-government"]["cache-salt.secret"] != "ab" * 32


def test_a_key_file_from_fabriek_keys_works_from_the_rendered_domain_secret(helm, tmp_path):
    from routers import KeyFile

    made = KeyFile(tmp_path / "made.json")
    key, record = made.create("pilot-mkb", {"pilot-mkb"})
    objects = helm.template({"secret": {"domains": {"commercial": {"apiKeys": made.path.read_text()}}}})
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind(objects, "Secret")}
    mounted = tmp_path / "mounted.json"
    mounted.write_text(secrets["fab-fabriek-commercial"]["api-keys.json"])
    # The commercial ingress reads the mounted file: the key printed once authenticates against it.
    assert KeyFile(mounted).read().authenticate(key).key_id == record.key_id


def test_fabriek_keys_create_writes_the_tenants_domain_key_file_at_the_mounted_path(tmp_path, monkeypatch):
    """The keys workflow of deploy/README.md: the chart's config with the mount root
    replaced by a local folder; `keys create` writes <folder>/<domain>/api-keys.json."""
    from serving.cli import main

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["platform"]
    defaults["auth"] = {"key_file": str(tmp_path / "{domain}" / "api-keys.json"),
                        "cache_salt_secret_file": str(tmp_path / "{domain}" / "cache-salt.secret")}
    config = tmp_path / "platform.yaml"
    config.write_text(yaml.safe_dump(defaults))
    assert main(["keys", "create", "--tenant", "pilot-mkb", "--config", str(config)]) == 0
    assert (tmp_path / "commercial" / "api-keys.json").is_file()
    assert not (tmp_path / "government" / "api-keys.json").exists()


def test_ray_token_auth_gives_each_domains_cluster_its_own_token(helm):
    objects = helm.template()
    secrets = {s["metadata"]["name"]: s for s in by_kind(objects, "Secret")}
    tokens = set()
    for domain, service in rayservices(objects).items():
        assert service["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token",
                                                                      "secretName": f"fab-fabriek-{domain}-ray"}
        token = secrets[f"fab-fabriek-{domain}-ray"]["stringData"]["auth_token"]
        assert len(token) >= 32
        tokens.add(token)
    assert len(tokens) == 2


def test_ray_token_auth_disabled(helm):
    objects = helm.template({"rayAuth": {"mode": "disabled"}})
    for service in by_kind(objects, "RayService"):
        assert service["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "disabled"}
    assert _names(objects, "Secret") == ["fab-fabriek-commercial", "fab-fabriek-government"]


def test_ledger_url_env_names_the_variable_the_domain_secret_fills(helm):
    objects = helm.template({"platform": {"ledger": {"url_env": "USAGE_DB"}}})
    env = [e["name"] for e in _pod_specs(objects)["government"]["containers"][0]["env"]]
    assert "USAGE_DB" in env and "FABRIEK_USAGE_DATABASE_URL" not in env


def test_dashboard_service_type(helm):
    services = {s["metadata"]["name"]: s for s in helm.template({"services": {"dashboard": {"type": "LoadBalancer"}}})
                if s["kind"] == "Service"}
    assert services["fab-fabriek-government-dashboard"]["spec"]["type"] == "LoadBalancer"
    assert services["fab-fabriek-commercial-dashboard"]["spec"]["type"] == "LoadBalancer"


def test_autoscaling_disabled(helm):
    [service, _] = by_kind(helm.template({"autoscaling": {"enabled": False}}), "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in cluster
    # Without KubeRay's autoscaler account the head takes the chart's ServiceAccount.
    assert cluster["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == "fab-fabriek"


def test_service_account_not_created(helm):
    objects = helm.template({"serviceAccount": {"create": False, "name": "ray-workers"}})
    assert not by_kind(objects, "ServiceAccount")
    assert _pod_specs(objects)["government"]["serviceAccountName"] == "ray-workers"


def test_grpc_servicer_functions_reach_the_serve_config(helm):
    for service in by_kind(helm.template({"grpc": {"servicerFunctions": ["fabriek_pb2_grpc.add_X_to_server"]}}),
                           "RayService"):
        grpc = yaml.safe_load(service["spec"]["serveConfigV2"])["grpc_options"]
        assert grpc == {"port": 9000, "grpc_servicer_functions": ["fabriek_pb2_grpc.add_X_to_server"]}


def test_worker_group_pod_fields_pass_through(helm):
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}
    objects = helm.template({"workerGroups": {"government": {"affinity": affinity, "labels": {"team": "gov"}}}})
    assert _pod_specs(objects)["government"]["affinity"] == affinity


def test_scaling_a_pool_changes_only_its_group(helm):
    groups = {g["groupName"]: g for service in by_kind(helm.template(
        {"workerGroups": {"commercial": {"replicas": 3, "maxReplicas": 6}}}), "RayService")
        for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert (groups["commercial"]["replicas"], groups["commercial"]["maxReplicas"]) == (3, 6)
    assert (groups["government"]["replicas"], groups["government"]["maxReplicas"]) == (1, 2)


# ---- bad values ------------------------------------------------------------------------

def _pool(name, accelerator="gpu", models=("eurollm-9b-instruct",)):
    return {"name": name, "accelerator": accelerator, "models": list(models)}


SCHEMA_ERRORS = {
    "unknown platform key": ({"platform": {"modles": []}}, "additional properties 'modles' not allowed"),
    "unknown accelerator": ({"platform": {"pools": [_pool("government", "tpu"), _pool("commercial")]}},
                            "value must be one of 'cpu', 'gpu'"),
    "unknown tenant class": ({"platform": {"tenants": [{"id": "x", "class": "military", "models": ["m"]}]}},
                             "/platform/tenants/0/class"),
    "negative gpus": ({"workerGroups": {"government": {"gpus": -1}}}, "/workerGroups/government/gpus"),
    "unknown worker group key": ({"workerGroups": {"government": {"gpu": 8}}}, "'gpu' not allowed"),
    "empty image tag": ({"image": {"tag": ""}}, "/image/tag"),
    "bad cache salt": ({"secret": {"domains": {"government": {"cacheSaltSecret": "not-hex"}}}},
                       "/secret/domains/government/cacheSaltSecret"),
    "secret for a name no domain can have": ({"secret": {"domains": {"military": {}}}}, "invalid propertyName 'military'"),
    "old single secret value": ({"secret": {"apiKeys": "{}"}}, "additional properties 'apiKeys' not allowed"),
    "ray port out of range": ({"rayPorts": {"nodeManager": 80}}, "/rayPorts/nodeManager"),
    "bad service type": ({"services": {"dashboard": {"type": "Public"}}}, "/services/dashboard/type"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_ERRORS))
def test_schema_refuses_bad_values(helm, case):
    values, message = SCHEMA_ERRORS[case]
    error = helm.template_error(values)
    assert "values don't meet the specifications of the schema" in error and message in error, error


CONTRADICTIONS = {
    "pool without worker group": (
        {"platform": {"pools": [_pool("government"), _pool("research", models=["geitje-7b-ultra", "mistral-small-24b-instruct"])],
                      "classes": {"commercial": {"pools": ["research"]}}}},
        "platform.pools[research]: no worker group; add workerGroups.research"),
    "worker group without pool": (
        {"workerGroups": {"research": {"gpus": 1, "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                                       "shmSize": "1Gi"}}},
        "workerGroups.research: no pool of that name in platform.pools"),
    "tensor parallel larger than the node": (
        {"workerGroups": {"commercial": {"gpus": 1}}},
        "platform.pools[commercial]: mistral-small-24b-instruct needs 2 GPUs"),
    "gpu pool without gpus": (
        {"workerGroups": {"government": {"gpus": 0}}}, "workerGroups.government.gpus: pool government has accelerator gpu"),
    "replicas outside their bounds": (
        {"workerGroups": {"government": {"replicas": 5}}}, "need minReplicas <= replicas <= maxReplicas"),
    "key file path in the platform config": (
        {"platform": {"auth": {"key_file": "/tmp/keys.json"}}}, "platform.auth: key_file and cache_salt_secret_file are set by the chart"),
    "class naming a pool that is gone": (
        {"platform": {"pools": [_pool("government")], "classes": {"commercial": {"pools": ["commercial"]}}},
         "workerGroups": {"commercial": None}},
        "platform.classes.commercial.pools: unknown pool commercial"),
    "api keys not a key file": (
        {"secret": {"domains": {"government": {"apiKeys": "hello"}}}},
        "secret.domains.government.apiKeys: not a fabriek key file"),
    "pool that no class uses": (
        {"platform": {"classes": {"commercial": {"pools": ["government"]}},
                      "tenants": [{"id": "rijksoverheid-chat", "class": "government", "models": ["eurollm-9b-instruct"]}]},
         "secret": {"domains": {"government": None, "commercial": None}}},
        "platform.pools[commercial]: no tenant class uses it, so it is in no isolation domain"),
    "secret for a domain the config does not derive": (
        {"secret": {"domains": {"research": {"apiKeys": ""}}}},
        "secret.domains.research: the config has no isolation domain research (domains: government, commercial)"),
    "another domain's key in a domain's key file": (
        {"secret": {"domains": {"government": {"apiKeys": json.dumps({"version": 1, "keys": [
            {"key_id": "fab_k1", "tenant_id": "pilot-mkb"}]})}}}},
        "secret.domains.government.apiKeys: key fab_k1 is for tenant pilot-mkb, which is not a tenant of domain government"),
    "one ledger url for every domain": (
        {"platform": {"ledger": {"url": "postgresql://db/usage"}}},
        "platform.ledger.url: 2 isolation domains (government, commercial) would share one usage database"),
    "worker group setting its own resources": (
        {"workerGroups": {"government": {"rayStartParams": {"resources": '{"domain_commercial": 1}'}}}},
        "workerGroups.government.rayStartParams.resources: set by the chart"),
    "head setting a ray port": (
        {"head": {"rayStartParams": {"min-worker-port": "30000"}}}, "head.rayStartParams.min-worker-port: set by the chart"),
    "worker group relabelling its domain": (
        {"workerGroups": {"commercial": {"labels": {"fabriek.ai/domain": "government"}}}},
        "workerGroups.commercial.labels.fabriek.ai/domain: set by the chart"),
    "worker port range upside down": (
        {"rayPorts": {"minWorker": 20000, "maxWorker": 10000}}, "rayPorts: need minWorker <= maxWorker"),
}


@pytest.mark.parametrize("case", sorted(CONTRADICTIONS))
def test_contradictory_values_fail_rendering_with_the_fix(helm, case):
    values, message = CONTRADICTIONS[case]
    error = helm.template_error(values)
    assert "fabriek: invalid values" in error and message in error, error


def test_lint_fails_on_values_the_schema_refuses(helm):
    # Helm's lint turns `fail` into a log line (lint mode), so contradictions are caught by
    # `helm template`/`install` above; the schema fails lint as well.
    result = helm.run("lint", str(CHART), values={"workerGroups": {"government": {"gpus": -1}}})
    assert result.returncode != 0 and "/workerGroups/government/gpus" in result.stdout + result.stderr


# ---- the schema and the docs -----------------------------------------------------------

def test_values_schema_json_is_generated_from_the_current_schemas():
    result = subprocess.run([sys.executable, str(REPO / "deploy/helm/values_schema.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _leaf_paths(values, prefix=""):
    """Paths of values.yaml down to where the docs stop: the platform config's sections, and
    the chart's settings (Kubernetes pass-through fields count as one value each)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path != "platform" and not prefix.startswith("platform"):
            passthrough = key in {"resources", "nodeSelector", "affinity", "annotations", "labels",
                                  "rayStartParams", "podSecurityContext", "securityContext"}
            if not passthrough:
                yield from _leaf_paths(value, f"{path}.")
                continue
        if path == "platform":
            yield from (f"platform.{k}" for k in value)
            continue
        yield path


def test_every_value_is_documented_with_a_param_line():
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+)", text, flags=re.M))
    paths = set(_leaf_paths(yaml.safe_load(text)))
    assert not paths - documented, f"values without `## @param`: {sorted(paths - documented)}"
    assert not documented - paths, f"`## @param` lines for no value: {sorted(documented - paths)}"


def test_tracing_keeps_one_new_trace_in_ten_by_default(helm):
    """Every request traced costs ~5% of a CPU engine's throughput; one in ten, nothing
    measurable (docs/benchmarks.md): the chart's default is the latter."""
    objects = helm.template({"tracing": {"otlpEndpoint": "http://otel-collector.monitoring:4317"}})
    for spec in _pod_specs(objects).values():
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"

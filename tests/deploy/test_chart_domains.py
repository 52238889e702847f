"""Isolation domains in the rendered chart: for every value set (the facility's two domains,
local-cpu, and the facility plus a research domain), each domain's front door, Secret,
Services and network reach stay with its own pools' pods; classes sharing a pool merge."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from routers import TenantClass, derive_domains
from serving.config.domains import domain_resource
from tests.deploy.conftest import (
    NAMESPACE,
    POWER_APP,
    domain_apps,
    by_kind,
    is_head,
    merged_research_values,
    pod_groups,
    rayservices,
    research_values,
    serve_config,
)

SECRETS_DIR = "/etc/fabriek/secrets"


def _domains(objects) -> dict[str, list[str]]:
    """What the serve config says the domains are: name -> pools (from its own platform config)."""
    from serving.config import load_config

    config = load_config(serve_config(objects)["applications"][0]["args"]["config"])
    return {d.name: list(d.pools) for d in config.domains()}


def _domain_of_group(objects) -> dict[str, str | None]:
    """Group name -> its domain label (a head's too: each domain has a cluster of its own)."""
    return {name: g["template"]["metadata"]["labels"].get("fabriek.ai/domain")
            for name, g in pod_groups(objects).items()}


# ---- placement --------------------------------------------------------------------------

def test_front_door_resources_only_on_the_domains_own_pools(rendered):
    _, _, objects = rendered
    domains = _domains(objects)
    groups = pod_groups(objects)
    for name, pools in domains.items():
        advertising = [g for g, spec in groups.items() if domain_resource(name) in json.loads(
            json.loads(spec["rayStartParams"].get("resources", '"{}"')))]
        assert advertising == pools, name
    for group, spec in groups.items():
        if is_head(group):
            head = spec["rayStartParams"]
            assert "resources" not in head or not any(
                k.startswith("domain_") for k in json.loads(json.loads(head["resources"])))
    # KubeRay's own serve Service leaves each head out, and the operator does not probe it.
    assert all(s["spec"]["excludeHeadPodFromServeSvc"] is True for s in rayservices(objects).values())


def test_one_ray_cluster_per_domain_with_its_own_pools_and_token(rendered):
    _, values, objects = rendered
    domains = _domains(objects)
    services = rayservices(objects)
    assert list(services) == list(domains)
    secrets = {s["metadata"]["name"]: s for s in by_kind(objects, "Secret")}
    tokens = set()
    for name, service in services.items():
        assert service["metadata"]["name"] == f"fab-fabriek-{name}"
        cluster = service["spec"]["rayClusterConfig"]
        # Its own pools' worker groups, and nothing of another domain's.
        assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == domains[name]
        assert cluster["headGroupSpec"]["template"]["metadata"]["labels"]["fabriek.ai/domain"] == name
        # Its own Ray token, in a Secret of its own.
        assert cluster["authOptions"] == {"mode": "token", "secretName": f"fab-fabriek-{name}-ray"}
        token = secrets[f"fab-fabriek-{name}-ray"]
        assert token["metadata"]["labels"]["fabriek.ai/domain"] == name
        tokens.add(token["stringData"]["auth_token"])
        # Its serve config holds its own application and its own power governor only.
        assert [(a["name"], a["args"]["domain"]) for a in serve_config(objects, name)["applications"]] == [
            (name, name), (POWER_APP, name)]
    assert len(tokens) == len(services)  # no two clusters share a token
    assert "fab-fabriek-secrets" not in secrets  # no token shared by all


def test_one_serve_app_per_domain_with_its_route_prefix_and_args(rendered):
    _, _, objects = rendered
    apps = domain_apps(objects)
    assert [a["name"] for a in apps] == list(_domains(objects))
    for app in apps:
        assert app["route_prefix"] == f"/{app['name']}"
        assert app["import_path"] == "serving.app:build_app"
        assert set(app["args"]) == {"config", "domain"} and app["args"]["domain"] == app["name"]
        auth = app["args"]["config"]["auth"]
        assert auth["key_file"] == f"{SECRETS_DIR}/{{domain}}/api-keys.json"
        assert auth["cache_salt_secret_file"] == f"{SECRETS_DIR}/{{domain}}/cache-salt.secret"


def test_each_domain_has_its_own_power_governor_off_http(rendered):
    _, _, objects = rendered
    from serving.config import load_config

    for domain in rayservices(objects):
        [power] = [a for a in serve_config(objects, domain)["applications"] if a["name"] == POWER_APP]
        assert power["route_prefix"] is None
        assert power["import_path"] == "serving.app:build_power_app"
        assert set(power["args"]) == {"config", "domain"} and power["args"]["domain"] == domain
        assert load_config(power["args"]["config"]) == load_config(domain_apps(objects)[0]["args"]["config"])


# ---- Services ---------------------------------------------------------------------------

def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_each_domains_services_select_only_its_pods(rendered):
    _, _, objects = rendered
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(objects, "Service")}
    groups = pod_groups(objects)
    domain_of = _domain_of_group(objects)
    for name in _domains(objects):
        for kind in ("http", "grpc"):
            selector = services[f"fab-fabriek-{name}-{kind}"]["selector"]
            assert selector["ray.io/serve"] == "true"
            # KubeRay adds ray.io/serve to the pods; without it, the rest must single out the domain.
            selector = {k: v for k, v in selector.items() if k != "ray.io/serve"}
            selected = [g for g, spec in groups.items() if _selects(selector, spec["template"]["metadata"]["labels"])]
            assert selected and all(domain_of[g] == name for g in selected), (name, kind, selected)
            assert set(selected) == {g for g, d in domain_of.items() if d == name and not is_head(g)}
        # Its dashboard: its own head only.
        selector = services[f"fab-fabriek-{name}-dashboard"]["selector"]
        assert [g for g, spec in groups.items() if _selects(selector, spec["template"]["metadata"]["labels"])] == [
            f"head:{name}"]


# ---- Secrets ----------------------------------------------------------------------------

def _secret_volumes(pod: dict[str, Any]) -> dict[str, str]:
    """Volume name -> Secret name."""
    return {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}


def test_each_domains_secret_is_mounted_only_into_its_pods(rendered):
    _, _, objects = rendered
    domain_of = _domain_of_group(objects)
    domain_secrets = {f"fab-fabriek-{d}" for d in _domains(objects)}
    for group, spec in pod_groups(objects).items():
        pod = spec["template"]["spec"]
        [container] = pod["containers"]
        volumes = _secret_volumes(pod)
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        # No pod mounts a Ray token Secret (KubeRay hands its own cluster's token over itself).
        assert not [v for v in volumes.values() if v.endswith("-ray")]
        ledger_env = [e for e in container["env"] if e["name"] == "FABRIEK_USAGE_DATABASE_URL"]
        if is_head(group):  # a head: no domain's keys, salt or ledger
            assert not set(volumes.values()) & domain_secrets, group
            assert not [m for m in mounts.values() if m["mountPath"].startswith(SECRETS_DIR)]
            assert not ledger_env
            continue
        domain = domain_of[group]
        assert set(volumes.values()) & domain_secrets == {f"fab-fabriek-{domain}"}, group
        [(volume, _)] = [(v, s) for v, s in volumes.items() if s == f"fab-fabriek-{domain}"]
        assert mounts[volume]["mountPath"] == f"{SECRETS_DIR}/{domain}" and mounts[volume]["readOnly"] is True
        assert [m["mountPath"] for m in mounts.values() if m["mountPath"].startswith(SECRETS_DIR)] == [
            f"{SECRETS_DIR}/{domain}"]
        [env] = ledger_env
        assert env["valueFrom"]["secretKeyRef"] == {"name": f"fab-fabriek-{domain}", "key": "usage-database-url",
                                                    "optional": True}


def test_the_usage_database_url_reaches_only_its_domains_pods(helm):
    values = research_values()
    values["secret"] = {"domains": {"research": {"usageDatabaseUrl": "postgresql://db/usage_research"}}}
    objects = helm.template(values)
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind(objects, "Secret")}
    assert secrets["fab-fabriek-research"]["usage-database-url"] == "postgresql://db/usage_research"
    assert [n for n, d in secrets.items() if "usage-database-url" in d] == ["fab-fabriek-research"]
    for group, spec in pod_groups(objects).items():
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in spec["template"]["spec"]["containers"][0]["env"]
                if e["name"] == "FABRIEK_USAGE_DATABASE_URL"}
        assert refs == ({"fab-fabriek-research"} if group == "research" else
                        set() if is_head(group) else {f"fab-fabriek-{group}"})


# ---- NetworkPolicies --------------------------------------------------------------------

OPERATOR_NAMESPACE = "ray-system"
# Ports worth trying: Ray's fixed ones, Serve's, direct ingress replicas', and arbitrary ones.
PROBE_PORTS = (1, 53, 443, 6379, 6380, 6381, 6382, 8000, 8080, 8265, 8404, 8500, 9000, 9101, 9500,
               10001, 10002, 15000, 19999, 30000, 40000, 52365, 65535)


def _match(selector: dict | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or ():
        value, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]) \
                or (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def _peer_matches(peer: dict, namespace: str, labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy peer (of a policy in NAMESPACE) selects a pod. ipBlocks name
    addresses outside the cluster here (the chart's defaults use none for pods)."""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not _match(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}):
            return False
    elif namespace != NAMESPACE:
        return False
    return _match(peer.get("podSelector"), labels)


def _port_matches(rule: dict, port: int) -> bool:
    if "ports" not in rule:
        return True
    return any(p["port"] <= port <= p.get("endPort", p["port"]) for p in rule["ports"])


def _allows(policies, direction: str, pod_labels, peer_ns, peer_labels, port) -> bool:
    """Kubernetes semantics: a pod selected by some policy of that direction is isolated; then
    some rule of one of those policies must admit the peer and port."""
    peers_key = "from" if direction == "Ingress" else "to"
    key = direction.lower()
    selecting = [p["spec"] for p in policies if _match(p["spec"]["podSelector"], pod_labels)
                 and direction in p["spec"]["policyTypes"]]
    if not selecting:
        return True
    return any(_port_matches(rule, port) and (not rule.get(peers_key) or any(
        _peer_matches(peer, peer_ns, peer_labels) for peer in rule[peers_key]))
        for spec in selecting for rule in spec.get(key, []))


def _connects(policies, src: dict[str, str] | None, dst: dict[str, str] | None, port: int,
              src_ns: str = NAMESPACE, dst_ns: str = NAMESPACE) -> bool:
    """Whether a connection is allowed: egress at the source (if it is the release's) and
    ingress at the destination (if it is the release's)."""
    egress = src_ns != NAMESPACE or _allows(policies, "Egress", src, dst_ns, dst, port)
    ingress = dst_ns != NAMESPACE or _allows(policies, "Ingress", dst, src_ns, src, port)
    return egress and ingress


def _pods(objects):
    return {name: g["template"]["metadata"]["labels"] for name, g in pod_groups(objects).items()}


def test_no_policy_lets_two_domains_pods_talk(rendered):
    """Not workers, not heads: two domains' clusters have no port in common at all."""
    _, _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    pods = _pods(objects)
    domain_of = _domain_of_group(objects)
    for a in pods:
        for b in pods:
            if domain_of[a] == domain_of[b]:
                continue
            for port in PROBE_PORTS:
                assert not _connects(policies, pods[a], pods[b], port), (a, b, port)
    # Nor does any rule of a policy over one domain's pods name another domain's pods as peers.
    for policy in policies:
        selected = {domain_of[g] for g in pods if _match(policy["spec"]["podSelector"], pods[g])}
        if len(selected) != 1:
            continue  # the default deny (all pods, no rules)
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                named = {domain_of[g] for g in pods if _peer_matches(peer, NAMESPACE, pods[g])}
                assert named <= selected, (policy["metadata"]["name"], peer)


def test_egress_and_ingress_are_denied_by_default(rendered):
    _, _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    [deny] = [p["spec"] for p in policies if p["metadata"]["name"] == "fab-fabriek-default-deny"]
    assert deny == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "fabriek",
                                                    "app.kubernetes.io/instance": "fab"}},
                    "policyTypes": ["Ingress", "Egress"]}
    pods = _pods(objects)
    outside = {"app": "anything"}
    for name, labels in pods.items():
        # Nothing out to an arbitrary pod elsewhere, on any port (the DNS rule names kube-dns),
        # but from the head's autoscaler to the Kubernetes API (networkPolicy.apiServerEgress).
        for port in PROBE_PORTS:
            expected = is_head(name) and port == 443
            assert _allows(policies, "Egress", labels, "elsewhere", outside, port) == expected, (name, port)
        assert _allows(policies, "Egress", labels, "kube-system", {"k8s-app": "kube-dns"}, 53)
        # Every egress rule of a domain's workers names its peers.
        if not is_head(name):
            for policy in policies:
                if _match(policy["spec"]["podSelector"], labels):
                    assert all(rule.get("to") for rule in policy["spec"].get("egress", [])), policy["metadata"]["name"]


def test_each_domains_head_and_workers_reach_each_other_on_rays_control_plane_only(rendered):
    _, _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    pods = _pods(objects)
    domain_of = _domain_of_group(objects)
    for name, labels in pods.items():
        if is_head(name):
            continue
        head = pods[f"head:{domain_of[name]}"]
        for port in (6379, 6380, 6381, 10002, 19999, 8500, 9500):
            assert _connects(policies, labels, head, port), (name, port)
        for port in (6380, 6381, 6382, 52365, 10002, 19999):
            assert _connects(policies, head, labels, port), (name, port)
        # Not the dashboard, the Ray client port, the head's API ports, nor beyond the range.
        for port in (8265, 10001, 8000, 9000, 20000, 30000):
            assert not _connects(policies, labels, head, port), (name, port)
        # The head reaches no domain's API or direct-ingress ports.
        for port in (8000, 9000, 30000, 40000):
            assert not _connects(policies, head, labels, port), (name, port)


def test_dashboard_and_gcs_only_from_the_operators(rendered):
    _, _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    pods = _pods(objects)
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    heads = [name for name in pods if is_head(name)]
    for head in heads:
        assert _connects(policies, operator, pods[head], 8265, src_ns=OPERATOR_NAMESPACE)
        assert _connects(policies, operator, pods[head], 6379, src_ns=OPERATOR_NAMESPACE)
        for namespace in ("clients", "monitoring", NAMESPACE):
            assert not _connects(policies, {"app": "client"}, pods[head], 8265, src_ns=namespace)
            assert not _connects(policies, {"app": "client"}, pods[head], 6379, src_ns=namespace)
        for name, labels in pods.items():
            if name != head:  # no other pod reaches a dashboard; no pod but a head runs one
                assert not _connects(policies, labels, pods[head], 8265), (name, head)
                assert not _connects(policies, operator, labels, 8265, src_ns=OPERATOR_NAMESPACE) or is_head(name)


def test_api_clients_reach_each_domain_on_the_api_ports_only(rendered):
    _, _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    client = {"app": "client"}
    for name, labels in _pods(objects).items():
        for port in (8000, 9000):
            assert _connects(policies, client, labels, port, src_ns="clients") == (not is_head(name)), (name, port)
        for port in (6379, 6380, 6381, 6382, 8265, 8500, 10002, 30000, 52365):
            assert not _connects(policies, client, labels, port, src_ns="clients"), (name, port)


def test_metrics_only_from_the_metrics_clients(rendered):
    _, _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    for labels in _pods(objects).values():
        assert _connects(policies, {"app": "prometheus"}, labels, 8080, src_ns="monitoring")
        assert not _connects(policies, {"app": "client"}, labels, 8080, src_ns="clients")


# ---- merging, and the derivation itself --------------------------------------------------

def test_a_class_sharing_a_pool_merges_domains(helm):
    objects = helm.template(merged_research_values())
    apps = domain_apps(objects)
    assert [(a["name"], a["route_prefix"]) for a in apps] == [("government-research", "/government-research"),
                                                             ("commercial", "/commercial")]
    groups = pod_groups(objects)
    assert json.loads(json.loads(groups["government"]["rayStartParams"]["resources"])) == {
        "pool_government": 1, "domain_government-research": 1}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind(objects, "Secret")}
    assert sorted(secrets) == ["fab-fabriek-commercial", "fab-fabriek-commercial-ray", "fab-fabriek-government-research",
                               "fab-fabriek-government-research-ray"]
    assert secrets["fab-fabriek-government-research"]["cache-salt.secret"] == "cd" * 32
    mounts = [m["mountPath"] for m in groups["government"]["template"]["spec"]["containers"][0]["volumeMounts"]]
    assert f"{SECRETS_DIR}/government-research" in mounts
    services = {s["metadata"]["name"] for s in by_kind(objects, "Service")}
    assert {"fab-fabriek-government-research-http", "fab-fabriek-government-research-grpc"} <= services


def _pool(name, models):
    return {"name": name, "accelerator": "gpu", "models": models, "engine_args": {"scheduling_policy": "priority"}}


# class -> pools; the chart must derive what routers/isolation_domains.py derives.
DERIVATIONS = {
    "apart": {"government": ["government"], "commercial": ["commercial"], "research": ["research"]},
    "research on the government pool": {"government": ["government"], "commercial": ["commercial"],
                                        "research": ["government", "research"]},
    "government lends research a pool": {"government": ["government", "research"], "commercial": ["commercial"],
                                          "research": ["research"]},
    "research on the commercial pool": {"government": ["government"], "commercial": ["commercial", "research"],
                                        "research": ["research"]},
    # government and commercial share nothing, but each shares with research: one domain.
    "a chain through research": {"government": ["government"], "commercial": ["commercial"],
                                 "research": ["research", "commercial", "government"]},
    "a chain, the other way round": {"government": ["government", "research"], "commercial": ["commercial"],
                                     "research": ["commercial"]},
    "two classes": {"government": ["government", "research"], "commercial": ["commercial"], "research": None},
    "commercial dropped": {"government": ["government"], "commercial": None,
                           "research": ["research", "commercial"]},
}


@pytest.mark.parametrize("pool_order", [("government", "commercial", "research"),
                                        ("research", "commercial", "government")])
@pytest.mark.parametrize("case", sorted(DERIVATIONS))
def test_the_chart_derives_the_domains_as_the_router_does(helm, case, pool_order):
    class_pools = DERIVATIONS[case]
    values = copy.deepcopy(research_values())
    models = {"government": ["eurollm-9b-instruct"], "commercial": ["mistral-small-24b-instruct", "geitje-7b-ultra"],
              "research": ["geitje-7b-ultra"]}
    values["platform"]["pools"] = [_pool(p, models[p]) for p in pool_order]
    # null drops a class of values.yaml; one values.yaml lacks (research) is simply left out.
    values["platform"]["classes"] = {c: (None if pools is None else {"pools": pools, "priority": 0})
                                     for c, pools in class_pools.items() if pools is not None or c != "research"}
    values["platform"]["tenants"] = []
    values["secret"] = {"domains": None}
    objects = helm.template(values)
    expected = derive_domains({TenantClass(c): p for c, p in class_pools.items() if p is not None}, list(pool_order))
    assert [a["name"] for a in domain_apps(objects)] == [d.name for d in expected]
    domain_of = _domain_of_group(objects)
    for domain in expected:
        assert [g for g in pool_order if domain_of[g] == domain.name] == list(domain.pools)
    assert sorted(s["metadata"]["name"] for s in by_kind(objects, "Secret")) == sorted(
        [f"fab-fabriek-{d.name}" for d in expected] + [f"fab-fabriek-{d.name}-ray" for d in expected])


def test_domain_namespaces_put_each_domains_cluster_in_its_own_namespace(helm):
    namespaces = {"government": "fab-gov", "commercial": "fab-pilots"}
    objects = helm.template({"domainNamespaces": namespaces})
    labelled = [o for o in objects if (o["metadata"].get("labels") or {}).get("fabriek.ai/domain")]
    assert {o["kind"] for o in labelled} >= {"RayService", "Secret", "Service", "NetworkPolicy"}
    for obj in labelled:
        assert obj["metadata"]["namespace"] == namespaces[obj["metadata"]["labels"]["fabriek.ai/domain"]], obj
    # Each namespace denies by default and has the pods' ServiceAccount.
    denies = [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "fab-fabriek-default-deny"]
    assert sorted(p["metadata"]["namespace"] for p in denies) == sorted(namespaces.values())
    assert sorted(a["metadata"]["namespace"] for a in by_kind(objects, "ServiceAccount")) == sorted(namespaces.values())
    # A pool's disruption budget sits beside its pods.
    assert {b["metadata"]["name"]: b["metadata"]["namespace"] for b in by_kind(objects, "PodDisruptionBudget")} == {
        "fab-fabriek-government": "fab-gov", "fab-fabriek-commercial": "fab-pilots"}
    # No policy lets in or out a peer of another domain's namespace: pod peers are the
    # policy's own namespace's, and no namespace peer names a domain's namespace.
    for policy in by_kind(objects, "NetworkPolicy"):
        spec = policy["spec"]
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                named = (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                assert named not in namespaces.values(), (policy["metadata"], peer)

"""End to end: each isolation domain has a front door of its own, and nothing crosses.

The shipped config has two domains, `government` and `commercial`; each is one Serve
application with its own route prefix (HTTP) and `application` name (gRPC), its own ingress
replicas, admission controller, key file, salt secret and ledger."""

from __future__ import annotations

import os
import re

import grpc
import httpx
import psutil
import pytest

from tests.conftest import EMBEDDING_MODEL_ID

from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 2}
DOMAINS = {"government": "gov-demo", "commercial": "pilot-demo"}


def post(fabriek_server, door: str, key: str | None, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(f"{fabriek_server.base_url(door)}{path}", json=BODY, headers=headers, timeout=60)


@pytest.mark.parametrize(("tenant", "other_door"), [("gov-demo", "commercial"), ("pilot-demo", "government")])
def test_a_key_at_another_domains_door_is_refused_like_an_unknown_key(fabriek_server, tenant, other_door):
    shown = post(fabriek_server, other_door, fabriek_server.keys[tenant])
    # A well-formed key of the same shape that no domain has ever issued.
    forged = post(fabriek_server, other_door, "fk_0123456789ab_" + "x" * 43)
    assert shown.status_code == forged.status_code == 401
    assert shown.json() == forged.json()
    # Nothing of the tenant's own domain shows: no pool, no replica.
    assert "x-fabriek-pool" not in shown.headers and "x-fabriek-replica" not in shown.headers
    assert post(fabriek_server, tenant, fabriek_server.keys[tenant]).status_code == 200


def test_no_door_without_a_domain_prefix(fabriek_server):
    response = httpx.post(f"{fabriek_server.root_url()}/v1/chat/completions", json=BODY, timeout=10,
                          headers={"Authorization": f"Bearer {fabriek_server.keys['gov-demo']}"})
    assert response.status_code == 404


def test_each_domain_answers_from_its_own_front_door_processes(fabriek_server):
    ingresses = {}
    for domain, tenant in DOMAINS.items():
        answers = [post(fabriek_server, tenant, fabriek_server.keys[tenant]) for _ in range(4)]
        assert {a.status_code for a in answers} == {200}
        assert {a.headers["x-fabriek-pool"] for a in answers} == {domain}
        ingresses[domain] = {a.headers["x-fabriek-ingress"] for a in answers}
    assert not ingresses["government"] & ingresses["commercial"]


def _front_door_processes(fabriek_server, domain: str) -> list[psutil.Process]:
    """The domain's front door replicas (its engine replica, in the direct layout) and its
    admission controller."""
    family = psutil.Process(fabriek_server.process.pid).children(recursive=True)
    pattern = rf"ServeReplica:{domain}:(OpenAIIngress|AdmissionController|{domain}--)"
    return [p for p in family if re.search(pattern, " ".join(p.cmdline()))]


@pytest.mark.parametrize(("domain", "cores", "nice"), [("government", {0}, 0), ("commercial", {1}, 15)])
def test_front_door_runs_on_its_domains_cores_at_its_niceness(fabriek_server, domain, cores, nice):
    """Every thread of the domain's front door (its engine replica) and its admission controller
    runs on its pool's cores, at its pool's niceness (the government pool's 0 needs root;
    without it Ray's 15 stays, with a warning)."""
    processes = _front_door_processes(fabriek_server, domain)
    assert len(processes) == 2  # the engine replica that is the front door, one controller
    expected_nice = nice if os.geteuid() == 0 else 15
    for process in processes:
        threads = process.threads()
        assert {frozenset(os.sched_getaffinity(t.id)) for t in threads} == {frozenset(cores)}
        assert {os.getpriority(os.PRIO_PROCESS, t.id) for t in threads} == {expected_nice}


def test_each_domain_keeps_its_own_key_file_salt_and_ledger(fabriek_server):
    home = fabriek_server.config_path.parent
    for domain, tenant in DOMAINS.items():
        keys = (home / domain / "api-keys.json").read_text()
        other = next(t for d, t in DOMAINS.items() if d != domain)
        assert f'"{tenant}"' in keys and f'"{other}"' not in keys
        assert (home / domain / "cache-salt.secret").is_file()
        assert (home / domain / "usage.db").is_file()
    assert (home / "government" / "cache-salt.secret").read_bytes() != \
        (home / "commercial" / "cache-salt.secret").read_bytes()


def _grpc_call(fabriek_server, metadata):
    """ListModels at the door of the domain the ``application`` metadata names."""
    # No `application`, or one that names no domain: the first domain's door, as a client would.
    door = dict(metadata).get("application")
    with grpc.insecure_channel(fabriek_server.grpc_target(door if door in fabriek_server.clusters else "government")) \
            as channel:
        return InferenceServiceStub(channel).ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=20)


@pytest.mark.parametrize("tenant", list(DOMAINS.values()))
def test_grpc_reaches_the_domain_its_application_names(fabriek_server, tenant):
    expected = [EMBEDDING_MODEL_ID, MODEL] if tenant == "gov-demo" else [MODEL]
    assert [m.id for m in _grpc_call(fabriek_server, fabriek_server.grpc_metadata(tenant)).models] == expected


def test_grpc_key_at_another_domains_application_is_unauthenticated(fabriek_server):
    wrong_door = [("authorization", f"Bearer {fabriek_server.keys['gov-demo']}"), ("application", "commercial")]
    with pytest.raises(grpc.RpcError) as refused:
        _grpc_call(fabriek_server, wrong_door)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_without_an_application_reaches_only_the_ports_own_domain(fabriek_server):
    """Each domain has a gRPC port of its own: a call that names no application reaches that
    port's domain and no other, so a key of another domain is unknown there."""
    key = [("authorization", f"Bearer {fabriek_server.keys['gov-demo']}")]
    with grpc.insecure_channel(fabriek_server.grpc_target("government")) as channel:
        models = InferenceServiceStub(channel).ListModels(pb.ListModelsRequest(), metadata=key, timeout=20).models
    assert [m.id for m in models] == [EMBEDDING_MODEL_ID, MODEL]
    with grpc.insecure_channel(fabriek_server.grpc_target("commercial")) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            InferenceServiceStub(channel).ListModels(pb.ListModelsRequest(), metadata=key, timeout=20)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

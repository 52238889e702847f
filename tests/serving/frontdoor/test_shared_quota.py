"""Quotas hold across front door replicas: a domain's replicas (ingress replicas in the relay
layout, engine replicas in the direct one) all lease from the domain's one admission
controller, so a quota is one quota however many replicas answer.

A real Ray Serve app: two replicas of the relay ingress in front of a stand-in engine that
answers at once (tests/serving/frontdoor/test_ingress.py), behind Ray Serve's HTTP proxy.
"""

from __future__ import annotations

import time

import httpx
import pytest
import ray
from ray import serve

from routers import KeyFile, Route
from serving.app import bind_admission_controller
from serving.config import load_config
from serving.config.admission_specs import LedgerSpec
from serving.config.domains import FrontDoorPlacement
from serving.frontdoor.front_door import FrontDoorSettings
from serving.frontdoor.ingress import OpenAIIngress
from tests.conftest import free_port
from tests.serving.frontdoor.test_ingress import EchoEngine

MODEL = "m"
CONFIG = load_config({
    "models": [{"id": MODEL, "source": "/models/m"}],
    "pools": [{"name": "echo", "accelerator": "cpu", "models": [MODEL]}],
    "classes": {"commercial": {"pools": ["echo"]}},
    "tenants": [{"id": "shared", "class": "commercial", "models": [MODEL], "quota": {"requests_per_minute": 20}}],
})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("shared-quota")
    keys = KeyFile(home / "keys.json")
    key, _ = keys.create("shared", {"shared"})
    ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, namespace="fabriek-tests")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = FrontDoorSettings(model_cards={MODEL: {}}, max_request_bytes=4096, domain="test",
                                 tenancy=CONFIG.tenancy(), key_file=keys.path,
                                 cache_salt_secret_file=home / "salt.secret",
                                 ledger=LedgerSpec(url=f"sqlite:///{home / 'usage.db'}"),
                                 quotas={t.id: t.quota.to_limits() for t in CONFIG.tenants})
    anywhere = FrontDoorPlacement(ray_resources={}, cores=None, cpu_nice=None)
    ingress = serve.deployment(OpenAIIngress, num_replicas=2, ray_actor_options={"num_cpus": 0})
    app = ingress.bind({Route("echo", MODEL): EchoEngine.bind()},
                       admission_controller=bind_admission_controller(CONFIG, anywhere), settings=settings)
    serve.run(app, name="shared", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "key": key}
    serve.shutdown()
    ray.shutdown()


def test_a_quota_holds_across_two_front_door_replicas(server):
    headers = {"Authorization": f"Bearer {server['key']}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hoi"}]}
    # 40 back to back within a quota of 20 per minute; the Serve proxy picks a replica per
    # request at random among the least loaded, so 20 answers all from one replica would
    # happen about twice in a million runs.
    started = time.monotonic()
    answers = [httpx.post(f"{server['url']}/v1/chat/completions", json=body, headers=headers, timeout=30)
               for _ in range(40)]
    refilled = int((time.monotonic() - started) * 20 / 60) + 1  # the bucket refills one per 3 s
    statuses = [a.status_code for a in answers]
    # A per-replica quota would let all 40 through.
    assert 20 <= statuses.count(200) <= 20 + refilled < 40
    assert statuses[:20] == [200] * 20 and 429 in statuses
    assert len({a.headers["x-fabriek-ingress"] for a in answers if a.status_code == 200}) == 2

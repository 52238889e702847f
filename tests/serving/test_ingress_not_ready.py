"""The ingress on a real Ray Serve app whose engine is still loading: 503, never a hang.

The engine here is a stand-in that never finishes loading (a real vLLM engine is ready
too quickly to catch this window reliably); everything else is the real ingress behind
the real Serve HTTP proxy.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import ray
from ray import serve

from serving.ingress import OpenAIIngress
from tests.conftest import free_port

MODEL = "loading-model"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class LoadingEngine:
    """Never finishes its constructor, like an engine loading large weights."""

    async def __init__(self):
        await asyncio.sleep(3600)


@pytest.fixture(scope="module")
def base_url():
    ray.shutdown()  # a no-op unless an earlier test left a Ray instance in this process
    ray.init(num_cpus=4, include_dashboard=False, namespace="fabriek-tests")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    ingress = serve.deployment(OpenAIIngress, ray_actor_options={"num_cpus": 0})
    # _blocking=False: the app never becomes RUNNING, which is the point of the test.
    serve._run(ingress.bind({MODEL: LoadingEngine.bind()}, {MODEL: {}}, 4096),
               _blocking=False, name="not-ready", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the proxy to route to the ingress
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 503:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    yield url
    serve.shutdown()
    ray.shutdown()


def test_health_is_503_while_the_engine_loads(base_url):
    response = httpx.get(f"{base_url}/health", timeout=10)
    assert response.status_code == 503
    assert response.json() == {"status": "starting", "models": {MODEL: "not ready"}}


def test_request_for_a_loading_model_is_503_at_once_with_retry_after(base_url):
    started = time.monotonic()
    response = httpx.post(f"{base_url}/v1/chat/completions", timeout=30,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hoi"}]})
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["type"] == "ServiceUnavailableError"


def test_unknown_model_is_still_404(base_url):
    response = httpx.post(f"{base_url}/v1/completions", timeout=30, json={"model": "other", "prompt": "x"})
    assert response.status_code == 404


def test_models_are_listed_while_loading(base_url):
    assert [m["id"] for m in httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"]] == [MODEL]

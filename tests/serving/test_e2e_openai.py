"""End to end: the real `fabriek serve` (Ray Serve + vLLM CPU engine) and the official openai client."""

from __future__ import annotations

import json
import signal

import httpx
import openai
import psutil
import pytest

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of the Netherlands?"}]


@pytest.fixture(scope="module")
def client(fabriek_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fabriek_server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(fabriek_server) -> httpx.Client:
    with httpx.Client(base_url=fabriek_server.base_url, timeout=60) as c:
        yield c


def test_serve_prints_urls_then_ready(fabriek_server):
    output = fabriek_server.output(last=10_000)
    assert f"API base URL:  http://127.0.0.1:{fabriek_server.http_port}/v1" in output
    assert f"Ray dashboard: http://127.0.0.1:{fabriek_server.dashboard_port}" in output
    assert output.index("API base URL") < output.index("fabriek ready")


def test_dashboard_needs_and_accepts_the_ray_token(fabriek_server):
    from serving.launcher import RAY_TOKEN_PATH

    url = f"http://127.0.0.1:{fabriek_server.dashboard_port}/api/version"
    assert httpx.get(url, timeout=10).status_code == 401
    token = RAY_TOKEN_PATH.read_text().strip()
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200
    assert response.json()["ray_version"] == "2.60.0"


def test_health_reports_every_model_ready(http):
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "models": {MODEL: "ready"}}


def test_models_lists_the_default_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].owned_by == "fabriek"


def test_chat_answers_greedily(client):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert "Amsterdam" in response.choices[0].message.content
    assert response.choices[0].finish_reason in {"stop", "length"}
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0


def test_streamed_chat_matches_unstreamed(client):
    unstreamed = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unstreamed.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == unstreamed.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "not streamed"


def test_stream_is_server_sent_events_ending_in_done(http):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 5, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert events.count("data: [DONE]") == 1
    for event in events[:-1]:
        assert json.loads(event.removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_completion(client):
    response = client.completions.create(model=MODEL, prompt="The Netherlands is a country in",
                                         max_tokens=8, temperature=0)
    assert response.choices[0].text.strip()
    assert response.usage.completion_tokens <= 8


def test_streamed_completion(client):
    chunks = list(client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=8,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=4)
    assert raised.value.body["type"] == "NotFoundError"
    assert "gpt-4o" in raised.value.body["message"]


@pytest.mark.parametrize("body", [
    b"this is not json",
    b"[1, 2, 3]",
    json.dumps({"model": MODEL}).encode(),                                   # no messages
    json.dumps({"model": MODEL, "messages": 5}).encode(),                    # wrong type
    json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": -1}).encode(),
    json.dumps({"model": MODEL, "messages": QUESTION, "temperature": "hot"}).encode(),
], ids=["not-json", "not-object", "no-messages", "messages-int", "negative-max-tokens", "bad-temperature"])
def test_bad_body_is_openai_shaped_400(http, body):
    response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400 and error["message"]


def test_bad_body_raises_openai_bad_request(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, n="many")


def test_prompt_longer_than_context_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="word " * 3000, max_tokens=4)


def test_streamed_prompt_longer_than_context_is_400_not_a_broken_stream(http):
    body = {"model": MODEL, "prompt": "word " * 3000, "max_tokens": 4, "stream": True}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400


def test_chat_content_with_invalid_parts_is_400(http):
    body = {"model": MODEL, "messages": [{"role": "user", "content": [42]}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text


def test_wrong_method_is_405_with_allow(http):
    response = http.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == 405


def test_body_over_limit_is_413(http):
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    response = http.post("/v1/chat/completions", json=huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413


def test_chunked_body_over_limit_is_413(http):
    def chunks():
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(2048):
            yield b"x" * 1024
        yield b'"}]}'
    response = http.post("/v1/chat/completions", content=chunks(),
                         headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_server_survives_bad_requests(client, http):
    for _ in range(3):
        http.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert answer.choices[0].message.content


def test_zz_sigterm_shuts_down_cleanly(fabriek_server):
    """Runs last in this module: it stops the session's server."""
    server = psutil.Process(fabriek_server.process.pid)
    family = server.children(recursive=True)
    assert len(family) >= 3, "expected Ray's processes and the engine under the server"
    fabriek_server.process.send_signal(signal.SIGTERM)
    assert fabriek_server.process.wait(timeout=120) == 0, fabriek_server.output()
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"orphans left behind: {[(p.pid, p.name()) for p in alive]}"
    assert "fabriek: stopped" in fabriek_server.output()

"""End to end: the real `fabriek serve` (Ray Serve + two pools of vLLM CPU engines) and the
official openai client, as both demo tenants with keys made by `fabriek keys create`."""

from __future__ import annotations

import json
import signal
import time
import uuid

import httpx
import openai
import psutil
import pytest

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of the Netherlands?"}]


POOL_OF = {"gov-demo": "government", "pilot-demo": "commercial"}


def openai_client(fabriek_server, api_key: str, door: str = "gov-demo") -> openai.OpenAI:
    """A client of the front door of ``door`` (a tenant's domain, or a domain by name)."""
    return openai.OpenAI(base_url=f"{fabriek_server.base_url(door)}/v1", api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def client(fabriek_server) -> openai.OpenAI:
    """The government demo tenant."""
    return openai_client(fabriek_server, fabriek_server.keys["gov-demo"])


@pytest.fixture(scope="module")
def pilot(fabriek_server) -> openai.OpenAI:
    """The commercial demo tenant."""
    return openai_client(fabriek_server, fabriek_server.keys["pilot-demo"], "pilot-demo")


@pytest.fixture(scope="module")
def http(fabriek_server) -> httpx.Client:
    headers = {"Authorization": f"Bearer {fabriek_server.keys['gov-demo']}"}
    with httpx.Client(base_url=fabriek_server.base_url("gov-demo"), timeout=60, headers=headers) as c:
        yield c


def test_serve_prints_urls_then_ready(fabriek_server):
    output = fabriek_server.output(last=10_000)
    ports = set()
    for domain in ("government", "commercial"):
        cluster = fabriek_server.cluster(domain)
        assert f"API base URL:  http://127.0.0.1:{cluster.http_port}/{domain}/v1  ({domain} domain" in output
        assert f"Ray dashboard: http://127.0.0.1:{cluster.dashboard_port} ({domain} domain)" in output
        assert f"Ray token:     {cluster.token_file} ({domain} domain's cluster only" in output
        ports.add((cluster.http_port, cluster.grpc_port, cluster.dashboard_port, cluster.gcs_port))
    assert len({port for row in ports for port in row}) == 8  # a port per domain: no shared socket
    assert output.index("API base URL") < output.index("fabriek ready")


@pytest.mark.parametrize("domain", ["government", "commercial"])
def test_each_domains_dashboard_needs_and_accepts_its_own_ray_token_only(fabriek_server, domain):
    other = "commercial" if domain == "government" else "government"
    url = f"http://127.0.0.1:{fabriek_server.cluster(domain).dashboard_port}/api/version"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = fabriek_server.cluster(other).token_file.read_text().strip()
    assert httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=10).status_code in (401, 403)
    token = fabriek_server.cluster(domain).token_file.read_text().strip()
    assert token != wrong and fabriek_server.cluster(domain).token_file.stat().st_mode & 0o077 == 0
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200
    assert response.json()["ray_version"] == "2.60.0"


@pytest.mark.parametrize("domain", ["government", "commercial"])
def test_health_reports_the_domains_own_pools_ready(fabriek_server, domain):
    response = httpx.get(f"{fabriek_server.base_url(domain)}/health", timeout=60)  # no key: a probe
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}  # up or down, nothing more without a key
    tenant = {"government": "gov-demo", "commercial": "pilot-demo"}[domain]
    response = httpx.get(f"{fabriek_server.base_url(domain)}/health", timeout=10,
                         headers={"Authorization": f"Bearer {fabriek_server.keys[tenant]}"})
    # Each front door knows only its own domain's pools.
    own = {domain: {MODEL: "ready"}, **({"government-embeddings": {"multilingual-e5-small": "ready"}}
                                         if domain == "government" else {})}
    assert response.json() == {"status": "ok", "pools": own}


@pytest.mark.parametrize("tenant", ["gov-demo", "pilot-demo"])
def test_models_lists_the_tenants_models(fabriek_server, tenant):
    models = openai_client(fabriek_server, fabriek_server.keys[tenant], tenant).models.list().data
    assert [m.id for m in models] == (["multilingual-e5-small", MODEL] if tenant == "gov-demo" else [MODEL])
    assert {m.owned_by for m in models} == {"fabriek"}


@pytest.mark.parametrize("tenant", ["gov-demo", "pilot-demo"])
def test_each_tenant_is_served_by_its_own_pools_replica(fabriek_server, tenant):
    tenant_client = openai_client(fabriek_server, fabriek_server.keys[tenant], tenant)
    raw = tenant_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert "Amsterdam" in raw.parse().choices[0].message.content
    pool = POOL_OF[tenant]
    assert raw.headers["x-fabriek-pool"] == pool
    # The replica names itself (Ray Serve's replica context in the engine process).
    deployment, replica_id = raw.headers["x-fabriek-replica"].split("#")
    assert deployment == f"{pool}--{MODEL}" and replica_id
    with tenant_client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=QUESTION, max_tokens=4, stream=True) as streamed:
        assert streamed.headers["x-fabriek-replica"] == raw.headers["x-fabriek-replica"]


def test_each_pool_engine_binds_its_own_core(fabriek_server):
    # vLLM's CPU worker reports its OpenMP binding (VLLM_CPU_OMP_THREADS_BIND from the pool).
    bindings = {line.split("VLLM_CPU_OMP_THREADS_BIND=")[1].split(",")[0]
                for line in fabriek_server.lines if "VLLM_CPU_OMP_THREADS_BIND=" in line}
    assert bindings == {"'0'", "'1'"}


def test_missing_key_is_401(fabriek_server):
    for path in ("/v1/models", "/v1/completions"):
        response = httpx.request("GET" if path.endswith("models") else "POST", fabriek_server.base_url() + path,
                                 json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "AuthenticationError"


def test_unknown_key_raises_authentication_error(fabriek_server):
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(fabriek_server, "fk_0123456789ab_forged").chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4)
    assert raised.value.body["code"] == 401


def test_key_created_and_revoked_while_running(fabriek_server):
    key = fabriek_server.cli("keys", "create", "--tenant", "pilot-demo").splitlines()[-1]
    late = openai_client(fabriek_server, key, "pilot-demo")
    deadline = time.monotonic() + 15
    while True:  # the ingress looks at the key file at most once a second
        try:
            assert late.models.list().data[0].id == MODEL
            break
        except openai.AuthenticationError:
            assert time.monotonic() < deadline, "a key created after start was never accepted"
            time.sleep(0.2)
    fabriek_server.cli("keys", "revoke", key.split("_")[1])
    with pytest.raises(openai.AuthenticationError):
        while time.monotonic() < deadline + 15:
            late.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)
            time.sleep(0.2)
    assert "revoked" in fabriek_server.cli("keys", "list")


@pytest.mark.parametrize("tenant", ["gov-demo", "pilot-demo"])
def test_model_not_granted_raises_not_found(fabriek_server, tenant):
    with pytest.raises(openai.NotFoundError):
        openai_client(fabriek_server, fabriek_server.keys[tenant], tenant).completions.create(
            model="eurollm-9b", prompt="x", max_tokens=1)


def test_no_prompt_or_completion_reaches_any_log(fabriek_server, client, pilot):
    """Prompts and completions of every tenant stay out of fabriek's, Ray's and vLLM's logs."""
    canary = f"canary-{uuid.uuid4().hex}"
    prompt = [{"role": "user", "content": f"Say {canary} and then name the capital of the Netherlands."}]
    texts = []
    for tenant_client in (client, pilot):
        answer = tenant_client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=24, temperature=0)
        texts.append(answer.choices[0].message.content)
        chunks = tenant_client.completions.create(model=MODEL, prompt=f"{canary} is", max_tokens=16,
                                                  temperature=0, stream=True)
        texts.append("".join(c.choices[0].text for c in chunks if c.choices))
    needles = [canary] + [t.strip() for t in texts if len(t.strip()) >= 12]
    assert len(needles) >= 3, texts
    time.sleep(3)  # Ray's throughput mode buffers replica logs; let them reach the files
    logs_dirs = [fabriek_server.ray_logs_dir(domain) for domain in fabriek_server.clusters]
    files = [p for logs_dir in logs_dirs for p in logs_dir.rglob("*") if p.is_file()]
    assert any(p.name.startswith("replica_") for p in files), f"no Serve replica logs in {logs_dirs}"
    sources = {"fabriek serve output": fabriek_server.output(last=1_000_000)}
    sources.update({str(p): p.read_text(errors="replace") for p in files})
    # The scan does see the engines' own log lines (vLLM's, from inside each EngineCore).
    assert sum("EngineCore" in text for name, text in sources.items() if name != "fabriek serve output") >= 2
    leaks = [(name, needle) for name, text in sources.items() for needle in needles if needle in text]
    assert not leaks, f"request content in logs: {leaks[:5]}"


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
        lines = [line for line in response.iter_lines() if line]
    # Comment lines (`: ...`) are SSE too, and clients skip them: the stream's joules ride in one.
    events = [line for line in lines if not line.startswith(":")]
    assert events[-1] == "data: [DONE]"
    assert events.count("data: [DONE]") == 1
    for event in events[:-1]:
        assert json.loads(event.removeprefix("data: "))["object"] == "chat.completion.chunk"
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) == 1 and comments[0].startswith(": x-fabriek-energy-j=")  # metered in this suite
    assert lines[-2] == comments[0]


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


@pytest.mark.stops_server
def test_sigterm_shuts_down_cleanly(fabriek_server):
    """Stops the session's server: the suite runs it last."""
    server = psutil.Process(fabriek_server.process.pid)
    family = server.children(recursive=True)
    assert len(family) >= 3, "expected Ray's processes and the engine under the server"
    fabriek_server.process.send_signal(signal.SIGTERM)
    assert fabriek_server.process.wait(timeout=120) == 0, fabriek_server.output()
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"orphans left behind: {[(p.pid, p.name()) for p in alive]}"
    assert "fabriek: stopped" in fabriek_server.output()

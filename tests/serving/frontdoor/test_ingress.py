"""The ingress on a real Ray Serve app with stand-in engines: tenants, pools, and not-ready 503s,
over HTTP and over gRPC (Ray Serve's Python gRPC proxy; the end-to-end suite goes through HAProxy).

Two stand-in engines sit behind the real ingress and the real Serve HTTP proxy: one that
never finishes loading (a real vLLM engine is ready too quickly to catch this window), and
one that answers at once with what it received, so the test sees exactly which fields
reached the engine. The end-to-end suite runs the same paths against real vLLM engines.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx
import openai
import pytest
import ray
from ray import serve
from ray.serve.llm.openai_api_models import ChatCompletionResponse
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponseChoice, ChatMessage
from vllm.entrypoints.serve.engine.protocol import UsageInfo

from google.rpc import error_details_pb2, status_pb2

from routers import KeyFile, RejectionReason, Route, cache_salt_for, load_or_create_secret
from serving.config.admission_specs import LedgerSpec
from serving.app import bind_admission_controller
from serving.config.domains import FrontDoorPlacement
from serving.config import GrpcSpec, load_config
from serving.admission.refusals import STATUS_BY_REASON
from serving.frontdoor.grpc_status import CODE_BY_HTTP_STATUS, CODE_BY_REASON
from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub
from serving.frontdoor.front_door import FrontDoorSettings
from serving.frontdoor.ingress import OpenAIIngress
from serving.engine.llm_server import stamp_first
from tests.conftest import free_port

MODEL = "m"
STUCK_LIMIT_S = 3.0  # the research class's time limit (its tenants `lab` and `slow`)
QUESTION = [{"role": "user", "content": "hoi"}]
CONFIG = load_config({
    "models": [{"id": MODEL, "source": "/models/m"}, {"id": "other", "source": "/models/o"},
               {"id": "stuck", "source": "/models/s"}, {"id": "broken", "source": "/models/b"}],
    "pools": [{"name": "loading", "accelerator": "cpu", "models": [MODEL]},
              {"name": "echo", "accelerator": "cpu", "models": [MODEL, "other", "stuck", "broken"]}],
    "classes": {"government": {"pools": ["loading"]}, "commercial": {"pools": ["echo"], "priority": 0},
                "research": {"pools": ["echo"], "max_request_s": STUCK_LIMIT_S}},
    "tenants": [{"id": "gov", "class": "government", "models": [MODEL]},
                {"id": "pilot", "class": "commercial", "models": [MODEL]},
                {"id": "lab", "class": "research", "models": [MODEL, "other"]},
                {"id": "slow", "class": "research", "models": ["stuck", "broken"]}],
})


@serve.deployment(ray_actor_options={"num_cpus": 0})
class LoadingEngine:
    """Never finishes its constructor, like an engine loading large weights."""

    async def __init__(self):
        await asyncio.sleep(3600)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class EchoEngine:
    """Answers every chat with the tenant fields it received, stamped like FabriekLLMServer."""

    async def check_health(self) -> None:
        return None

    probe_engine = check_health  # FabriekLLMServer's readiness probe; nothing behind it here

    async def chat(self, request, raw_request_info=None):
        received = {"model": request.model, "user": request.user, "cache_salt": request.cache_salt,
                    "priority": request.priority}
        answer = ChatCompletionResponse(
            model=request.model, usage=UsageInfo(prompt_tokens=1, completion_tokens=1, total_tokens=2),
            choices=[ChatCompletionResponseChoice(
                index=0, message=ChatMessage(role="assistant", content=json.dumps(received)))])

        async def one():
            yield answer
        context = serve.get_replica_context()
        return stamp_first(one(), context.deployment, context.replica_id.unique_id)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class StuckEngine:
    """Healthy to its probes, but stops in every answer: streams one event, then hangs; an
    unstreamed answer never comes. What a wedged GPU or engine looks like from outside."""

    async def check_health(self) -> None:
        return None

    probe_engine = check_health  # FabriekLLMServer's readiness probe; nothing behind it here

    async def chat(self, request, raw_request_info=None):
        async def stuck():
            if request.stream:
                yield ['data: {"id":"s","object":"chat.completion.chunk","created":0,"model":"stuck",'
                       '"choices":[{"index":0,"delta":{"content":"Hoi"}}],'
                       '"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}}\n\n']
            await asyncio.sleep(3600)
            yield []
        context = serve.get_replica_context()
        return stamp_first(stuck(), context.deployment, context.replica_id.unique_id)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class BrokenEngine:
    """Fails in the middle of every stream, as vLLM reports an engine error mid-answer."""

    async def check_health(self) -> None:
        return None

    probe_engine = check_health  # FabriekLLMServer's readiness probe; nothing behind it here

    async def chat(self, request, raw_request_info=None):
        async def broken():
            yield ['data: {"id":"b","object":"chat.completion.chunk","created":0,"model":"broken",'
                   '"choices":[{"index":0,"delta":{"content":"Hoi"}}],'
                   '"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}\n\n']
            yield ['data: {"error":{"message":"engine step failed","type":"InternalServerError",'
                   '"param":null,"code":500}}\n\n', "data: [DONE]\n\n"]
        context = serve.get_replica_context()
        return stamp_first(broken(), context.deployment, context.replica_id.unique_id)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("ingress")
    keys = KeyFile(home / "keys.json")
    tenant_keys = {t: keys.create(t, {"gov", "pilot", "lab", "slow"}) for t in ("gov", "pilot", "lab", "slow")}
    ray.shutdown()  # a no-op unless an earlier test left a Ray instance in this process
    ray.init(num_cpus=4, include_dashboard=False, namespace="fabriek-tests")
    port, grpc_port = free_port(), free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                grpc_options={"port": grpc_port, "grpc_servicer_functions": [GrpcSpec.SERVICER_FUNCTION]})
    ingress = serve.deployment(OpenAIIngress, ray_actor_options={"num_cpus": 0})
    engines = {Route("loading", MODEL): LoadingEngine.bind(), Route("echo", MODEL): EchoEngine.bind(),
               Route("echo", "other"): EchoEngine.options(name="EchoOther").bind(),
               Route("echo", "stuck"): StuckEngine.bind(), Route("echo", "broken"): BrokenEngine.bind()}
    # One ingress over pools of two domains: what is tested here is its routing within what it is
    # given (fail closed, no fallback between pools); the app builder gives it one domain.
    anywhere = FrontDoorPlacement(ray_resources={}, cores=None, cpu_nice=None)
    settings = FrontDoorSettings(model_cards={MODEL: {}, "other": {}, "stuck": {}, "broken": {}},
                                 max_request_bytes=4096, domain="test", tenancy=CONFIG.tenancy(),
                                 key_file=keys.path, cache_salt_secret_file=home / "salt.secret",
                                 key_reload_interval_s=0.2, ledger=LedgerSpec(url=f"sqlite:///{home / 'usage.db'}"))
    app = ingress.bind(engines, admission_controller=bind_admission_controller(CONFIG, anywhere), settings=settings)
    # _blocking=False: the app never becomes RUNNING, which is the point of the test.
    serve._run(app, _blocking=False, name="not-ready", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the echo engines are probed ready
        try:
            lab = {"Authorization": f"Bearer {tenant_keys['lab'][0]}"}  # its pool: echo, both models
            if httpx.get(f"{url}/health", headers=lab, timeout=5).json().get("pools", {}).get("echo") == {
                    MODEL: "ready", "other": "ready"}:
                break
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.5)
    yield {"url": url, "grpc_target": f"127.0.0.1:{grpc_port}", "keys": {t: k for t, (k, _) in tenant_keys.items()},
           "records": {t: r for t, (_, r) in tenant_keys.items()}, "key_file": keys,
           "secret": load_or_create_secret(home / "salt.secret"), "ledger": f"sqlite:///{home / 'usage.db'}"}
    serve.shutdown()
    ray.shutdown()


@pytest.mark.parametrize("field", [{"cache_salt": "guessed-salt"}, {"priority": -1000},
                                   {"request_id": "fabriek-0"}, {"kv_transfer_params": {}}])
def test_platform_fields_from_the_client_are_refused_by_name(server, field):
    response = post(server, "pilot", {"model": MODEL, "messages": QUESTION, **field})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == next(iter(field))


def post(server, tenant, body, path="/v1/chat/completions", key=None):
    headers = {"Authorization": f"Bearer {key or server['keys'][tenant]}"} if tenant or key else {}
    return httpx.post(f"{server['url']}{path}", json=body, headers=headers, timeout=30)


def test_health_is_503_while_one_pool_loads_and_says_no_more_without_a_key(server):
    response = httpx.get(f"{server['url']}/health", timeout=10)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}  # no pool, no model named


def test_health_with_a_key_shows_only_the_tenants_own_pools(server):
    def health(tenant):
        return httpx.get(f"{server['url']}/health", timeout=10,
                         headers={"Authorization": f"Bearer {server['keys'][tenant]}"}).json()
    assert health("gov") == {"status": "unavailable", "pools": {"loading": {MODEL: "not ready"}}}
    assert health("pilot") == {"status": "unavailable", "pools": {"echo": {MODEL: "ready"}}}
    bad = httpx.get(f"{server['url']}/health", headers={"Authorization": "Bearer fab-nope"}, timeout=10)
    assert bad.status_code == 401


def test_tenant_of_a_loading_pool_gets_503_at_once_never_another_pool(server):
    started = time.monotonic()
    response = post(server, "gov", {"model": MODEL, "messages": QUESTION})
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["type"] == "ServiceUnavailableError"


def test_engine_gets_the_tenant_fields_not_the_clients(server):
    body = {"model": MODEL, "messages": QUESTION, "user": "mallory"}
    response = post(server, "pilot", body)
    assert response.status_code == 200, response.text
    received = json.loads(response.json()["choices"][0]["message"]["content"])
    assert received == {"model": MODEL, "user": "pilot", "priority": 0,
                        "cache_salt": cache_salt_for(server["secret"], "pilot")}
    assert response.headers["x-fabriek-pool"] == "echo"
    assert response.headers["x-fabriek-replica"].startswith("EchoEngine#")
    # The relay layout meters pools, not requests: not measured is no header, never a guess.
    assert "x-fabriek-energy-j" not in response.headers


def test_salts_differ_per_tenant_on_a_shared_pool(server):
    salts = {t: json.loads(post(server, t, {"model": MODEL, "messages": QUESTION}).json()
                           ["choices"][0]["message"]["content"])["cache_salt"] for t in ("pilot", "lab")}
    assert salts["pilot"] != salts["lab"]


def test_model_may_be_omitted_only_when_the_tenant_has_one(server):
    assert post(server, "pilot", {"messages": QUESTION}).status_code == 200
    response = post(server, "lab", {"messages": QUESTION})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


@pytest.mark.parametrize(("tenant", "model"), [("pilot", "other"), ("pilot", "gpt-4o"), ("gov", "other")])
def test_model_not_granted_is_404_like_an_unknown_one(server, tenant, model):
    response = post(server, tenant, {"model": model, "messages": QUESTION})
    assert response.status_code == 404
    assert response.json()["error"] == {"message": f"The model `{model}` does not exist.",
                                        "type": "NotFoundError", "param": "model", "code": 404}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic eDp5"},
                                     {"Authorization": "Bearer fk_000000000000_nope"}])
def test_missing_or_bad_key_is_401_before_the_body_is_read(server, headers):
    response = httpx.post(f"{server['url']}/v1/chat/completions", content=b"not even json",
                          headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "AuthenticationError"


def test_models_lists_only_the_tenants_models_and_needs_a_key(server):
    def listed(tenant):
        return [m.id for m in openai.OpenAI(base_url=f"{server['url']}/v1", api_key=server["keys"][tenant],
                                            max_retries=0).models.list().data]
    assert listed("pilot") == [MODEL]
    assert listed("lab") == [MODEL, "other"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server['url']}/v1", api_key="wrong", max_retries=0).models.list()


def test_new_and_revoked_keys_apply_while_running(server):
    key, record = server["key_file"].create("lab", {"lab"})
    deadline = time.monotonic() + 10
    while post(server, None, {"messages": QUESTION, "model": MODEL}, key=key).status_code != 200:
        assert time.monotonic() < deadline, "new key never accepted"
        time.sleep(0.1)
    server["key_file"].revoke(record.key_id)
    while post(server, None, {"messages": QUESTION, "model": MODEL}, key=key).status_code != 401:
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.1)


# --- gRPC: the same policy through the same Gateway ------------------------------------


def test_every_rejection_has_an_http_status_and_a_grpc_code_that_agree():
    assert set(STATUS_BY_REASON) == set(CODE_BY_REASON) == set(RejectionReason)
    for reason, status in STATUS_BY_REASON.items():
        assert CODE_BY_HTTP_STATUS[status] == CODE_BY_REASON[reason] or status == 403, reason


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server["grpc_target"]) as channel:
        yield InferenceServiceStub(channel)


def grpc_key(server, tenant):
    return [("authorization", f"Bearer {server['keys'][tenant]}")]


def test_grpc_engine_gets_the_tenant_fields(server, stub):
    response, call = stub.Chat.with_call(pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(
        role=pb.ROLE_USER, content="hoi")]), metadata=grpc_key(server, "pilot"), timeout=30)
    assert json.loads(response.content) == {"model": MODEL, "user": "pilot", "priority": 0,
                                            "cache_salt": cache_salt_for(server["secret"], "pilot")}
    trailing = dict(call.trailing_metadata())
    assert trailing["x-fabriek-pool"] == "echo" and trailing["x-fabriek-replica"].startswith("EchoEngine#")
    assert "x-fabriek-energy-j" not in trailing  # not measured here (relay layout)


def test_grpc_tenant_of_a_loading_pool_is_unavailable_with_a_retry_delay(server, stub):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Chat(pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hoi")]),
                  metadata=grpc_key(server, "gov"), timeout=30)
    assert time.monotonic() - started < 5
    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    trailing = dict(error.trailing_metadata())
    assert trailing["retry-after"] == "5"
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry) and retry.retry_delay.seconds == 5


def test_grpc_model_may_be_omitted_only_when_the_tenant_has_one(server, stub):
    request = pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hoi")])
    assert stub.Chat(request, metadata=grpc_key(server, "pilot"), timeout=30).content
    with pytest.raises(grpc.RpcError) as raised:
        stub.Chat(request, metadata=grpc_key(server, "lab"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_lists_only_the_tenants_models(server, stub):
    assert [m.id for m in stub.ListModels(pb.ListModelsRequest(), metadata=grpc_key(server, "lab"),
                                          timeout=10).models] == [MODEL, "other"]


def test_grpc_count_tokens_without_a_local_tokenizer_is_failed_precondition(server, stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.CountTokens(pb.CountTokensRequest(text="hoi"), metadata=grpc_key(server, "pilot"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _record(server, request_id):
    from serving.records.ledger import UsageLedger
    ledger = UsageLedger(server["ledger"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            records = [r for r in ledger.records(tenant_id="slow") if r.request_id == request_id]
            if records and records[0].status != "started":
                return records[0]
            time.sleep(0.2)
        raise AssertionError(f"no finished record for {request_id}")
    finally:
        ledger.close()


def test_a_stuck_engine_answers_504_within_the_class_time_limit(server):
    started = time.monotonic()
    response = post(server, "slow", {"model": "stuck", "messages": QUESTION})
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "TimeoutError"
    assert STUCK_LIMIT_S - 0.5 < elapsed < STUCK_LIMIT_S + 5
    record = _record(server, response.headers["x-fabriek-request-id"])
    # Charged its prompt, counted now (the tenant has no token quota that counted it before).
    assert record.status_code == 504 and record.prompt_tokens > 0


def test_a_stream_that_stalls_ends_with_an_error_event_and_is_charged_what_it_sent(server):
    started = time.monotonic()
    with httpx.stream("POST", f"{server['url']}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {server['keys']['slow']}"},
                      json={"model": "stuck", "messages": QUESTION, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
        request_id = response.headers["x-fabriek-request-id"]
    assert STUCK_LIMIT_S - 0.5 < time.monotonic() - started < STUCK_LIMIT_S + 5
    assert '"content":"Hoi"' in events[0] and '"usage"' not in events[0]  # running usage is the platform's
    assert json.loads(events[-2][6:])["error"]["code"] == 504 and events[-1] == "data: [DONE]"
    record = _record(server, request_id)
    assert (record.status_code, record.prompt_tokens, record.completion_tokens) == (504, 5, 1)


def test_grpc_call_to_a_stuck_engine_is_deadline_exceeded_within_the_limit(server, stub):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Chat(pb.ChatRequest(model="stuck", messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hoi")]),
                  metadata=[("authorization", f"Bearer {server['keys']['slow']}")], timeout=30)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < STUCK_LIMIT_S + 5


def test_a_stream_that_fails_mid_answer_is_recorded_as_failed_and_charged_what_it_sent(server):
    with httpx.stream("POST", f"{server['url']}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {server['keys']['slow']}"},
                      json={"model": "broken", "messages": QUESTION, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
        request_id = response.headers["x-fabriek-request-id"]
    assert json.loads(events[1][6:])["error"]["code"] == 500 and events[-1] == "data: [DONE]"
    record = _record(server, request_id)
    assert (record.status_code, record.prompt_tokens, record.completion_tokens) == (500, 5, 2)

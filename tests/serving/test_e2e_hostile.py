"""End to end, as a hostile tenant would try it: every probe gets a clear error and nothing
else; nothing goes unbilled (the real `fabriek serve`, the official openai client, real gRPC).

Each test is one attack from docs/security.md; its name says what the platform does about it.
"""

from __future__ import annotations

import json
import socket
import time

import grpc
import httpx
import openai
import pytest

from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.records.ledger import UsageLedger
from tests.conftest import MODEL_ID

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "Tell me a long story about Utrecht."}]
REQUEST_ID_HEADER = "x-fabriek-request-id"


def client(server, tenant="pilot-demo") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url(tenant)}/v1", api_key=server.keys[tenant], max_retries=0)


def post(server, tenant, body, path="/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{server.base_url(tenant)}{path}", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {server.keys[tenant]}"})


def finished_record(server, tenant, request_id=None, *, since=None, protocol=None, timeout_s=20.0):
    """The finished usage record of a request (by id, or the newest of a protocol since a time)."""
    ledger = UsageLedger(server.ledger_url(tenant))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records = [r for r in ledger.records(tenant_id=tenant, since=since)
                       if (request_id is None or r.request_id == request_id)
                       and (protocol is None or r.protocol == protocol)]
            if records and records[-1].status != "started":
                return records[-1]
            time.sleep(0.2)
        raise AssertionError(f"no finished record for {request_id or protocol}")
    finally:
        ledger.close()


def leave_stream_after(server, tenant, events, **fields) -> tuple[str, list[str]]:
    """Read ``events`` data events of a long streamed answer, then hang up."""
    body = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 400, "ignore_eos": True,
            "stream": True, **fields}
    seen = []
    with httpx.stream("POST", f"{server.base_url(tenant)}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {server.keys[tenant]}"}) as response:
        assert response.status_code == 200
        request_id = response.headers[REQUEST_ID_HEADER]
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen.append(line)
            if len(seen) >= events:
                break
    return request_id, seen


# --- 1. Accounting nobody can dodge --------------------------------------------------------

def test_a_stream_the_client_leaves_is_charged_the_tokens_it_produced(fabriek_server):
    request_id, seen = leave_stream_after(fabriek_server, "pilot-demo", 30)
    assert not any('"usage"' in event for event in seen)  # the running usage is the platform's
    record = finished_record(fabriek_server, "pilot-demo", request_id)
    assert record.status_code == 499 and record.status == "cancelled"
    assert record.prompt_tokens > 10
    # 29 content events reached the client (the first carries the role only); the engine
    # was stopped long before its 400.
    assert 29 <= record.completion_tokens < 400


def test_a_client_that_asks_for_continuous_usage_gets_it(fabriek_server):
    _, seen = leave_stream_after(fabriek_server, "pilot-demo", 5,
                                 stream_options={"include_usage": True, "continuous_usage_stats": True})
    assert all(json.loads(event[6:])["usage"]["prompt_tokens"] > 0 for event in seen)


def test_a_cancelled_grpc_stream_is_charged_the_tokens_it_produced(fabriek_server):
    since = time.time()
    with grpc.insecure_channel(fabriek_server.grpc_target("pilot-demo")) as channel:
        call = channel.unary_stream("/fabriek.v1.InferenceService/ChatStream",
                                    request_serializer=pb.ChatRequest.SerializeToString,
                                    response_deserializer=pb.ChatStreamResponse.FromString)(
            pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_USER, content=QUESTION[0]["content"])],
                           sampling=pb.SamplingParams(max_tokens=400)),
            metadata=fabriek_server.grpc_metadata("pilot-demo"), timeout=120)
        received = [next(call) for _ in range(4)]
        call.cancel()
    assert all(not m.usage.completion_tokens for m in received)
    record = finished_record(fabriek_server, "pilot-demo", since=since, protocol="grpc")
    assert record.status_code == 499 and record.prompt_tokens > 10 and 3 <= record.completion_tokens < 400


# --- 2. Bounded requests ------------------------------------------------------------------

@pytest.mark.parametrize(("body", "param"), [
    ({"n": 64}, "n"),
    ({"n": 0}, "n"),
    ({"n": -1}, "n"),
    ({"n": 8, "use_beam_search": True}, "n"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 10**12}, "max_tokens"),
    ({"top_logprobs": 10_000, "logprobs": True}, "top_logprobs"),
])
def test_sequence_and_size_bounds_are_400_naming_the_field(fabriek_server, body, param):
    response = post(fabriek_server, "pilot-demo", {"model": MODEL_ID, "messages": QUESTION, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_prompt_list_counts_its_prompts_as_sequences(fabriek_server):
    response = post(fabriek_server, "pilot-demo", {"model": MODEL_ID, "prompt": ["Hoi"] * 256, "max_tokens": 1},
                    path="/v1/completions")
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


def test_sequences_are_reserved_and_count_as_concurrent_requests(fabriek_server):
    answer = post(fabriek_server, "pilot-demo", {"model": MODEL_ID, "messages": QUESTION, "n": 2, "max_tokens": 8})
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 2
    record = finished_record(fabriek_server, "pilot-demo", answer.headers[REQUEST_ID_HEADER])
    assert record.reserved_tokens == 2 * 8  # (this tenant's prompts are not counted: no token quota)
    # A tenant allowed 2 concurrent requests cannot run 3 sequences in one.
    refused = post(fabriek_server, "quota-conc2", {"model": MODEL_ID, "messages": QUESTION, "n": 3, "max_tokens": 4})
    assert refused.status_code == 400 and "3 sequences" in refused.json()["error"]["message"]


# --- 3. An allowlist of request fields ----------------------------------------------------

@pytest.mark.parametrize("field", [
    {"kv_transfer_params": {"do_remote_decode": True}}, {"vllm_xargs": {"plugin": "x"}},
    {"return_prompt_text": True}, {"cache_salt": "a-guess"}, {"priority": -1000},
    {"chat_template": "{% for i in range(10**9) %}x{% endfor %}"}, {"made_up_field": 1},
])
def test_fields_the_platform_does_not_offer_are_400_naming_the_field(fabriek_server, field):
    with pytest.raises(openai.BadRequestError) as raised:
        client(fabriek_server).chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=2,
                                                       extra_body=field)
    name = next(iter(field))
    assert raised.value.body["param"] == name
    assert f"Unrecognized request argument supplied: {name}" in raised.value.body["message"]


def test_a_named_tool_choice_for_a_tool_not_defined_is_400(fabriek_server):
    tools = [{"type": "function", "function": {"name": "lookup_permit", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as raised:
        client(fabriek_server).chat.completions.create(
            model=MODEL_ID, messages=QUESTION, max_tokens=4, tools=tools,
            tool_choice={"type": "function", "function": {"name": "book_appointment"}})
    assert raised.value.body["param"] == "tool_choice"


def test_a_grpc_field_outside_the_proto_is_invalid_argument(fabriek_server):
    raw = pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hoi")]).SerializeToString()
    with grpc.insecure_channel(fabriek_server.grpc_target("pilot-demo")) as channel:
        chat = channel.unary_unary("/fabriek.v1.InferenceService/Chat", request_serializer=lambda b: b,
                                   response_deserializer=pb.ChatResponse.FromString)
        with pytest.raises(grpc.RpcError) as raised:
            chat(raw + bytes([0xF8, 0x06, 0x01]), metadata=fabriek_server.grpc_metadata("pilot-demo"), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field number 111" in raised.value.details()


# --- 4. A front door that stays fast for everyone -----------------------------------------

def test_a_grpc_message_over_the_http_body_limit_is_refused(fabriek_server):
    huge = pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="x" * (2 << 20))])
    with grpc.insecure_channel(fabriek_server.grpc_target("pilot-demo")) as channel:
        chat = channel.unary_unary("/fabriek.v1.InferenceService/Chat",
                                   request_serializer=pb.ChatRequest.SerializeToString,
                                   response_deserializer=pb.ChatResponse.FromString)
        with pytest.raises(grpc.RpcError) as raised:
            chat(huge, metadata=fabriek_server.grpc_metadata("pilot-demo"), timeout=60)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_wrong_secrets_for_a_real_key_id_are_refused_alike_and_do_not_slow_others(fabriek_server):
    key = fabriek_server.keys["pilot-demo"]
    forged = key[:key.rindex("_") + 1] + "A" * 43
    started = time.monotonic()
    answers = [httpx.get(f"{fabriek_server.base_url('pilot-demo')}/v1/models", timeout=30,
                         headers={"Authorization": f"Bearer {forged}"}) for _ in range(30)]
    assert {a.status_code for a in answers} == {401}
    assert len({a.text for a in answers}) == 1  # hashed or not, the same answer
    # 30 scrypt hashes would take ~2 s of one core here; past the limit none is made.
    assert time.monotonic() - started < 10
    assert client(fabriek_server).models.list().data  # the real key still works

def test_client_chosen_model_names_reach_neither_ledger_nor_metric_labels(fabriek_server):
    since = time.time()
    huge = post(fabriek_server, "pilot-demo", {"model": "m" * 200_000, "messages": QUESTION})
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "model"
    names = [f"made-up-model-{i}" for i in range(20)]
    assert {post(fabriek_server, "pilot-demo", {"model": n, "messages": QUESTION}).status_code
            for n in names} == {404}
    ledger = UsageLedger(fabriek_server.ledger_url("pilot-demo"))
    try:
        models = [r.model for r in ledger.records(tenant_id="pilot-demo", since=since)]
    finally:
        ledger.close()
    assert all(m is None or len(m) <= 256 for m in models)  # the 200 kB name never got there
    deadline = time.monotonic() + 30
    while True:  # Ray exports metrics every few seconds
        text = httpx.get(fabriek_server.metrics_url("pilot-demo"), timeout=60).text
        if 'model="other"' in text or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert 'model="other"' in text
    assert "made-up-model" not in text


def test_an_unauthenticated_chunked_upload_is_refused_before_its_body_is_read(fabriek_server):
    host, port = "127.0.0.1", fabriek_server.cluster("pilot-demo").http_port
    path = f"/{fabriek_server.domain_of['pilot-demo']}/v1/chat/completions"
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        sock.sendall(b"400\r\n" + b"x" * 0x400 + b"\r\n")  # 1 KiB of a body that never ends
        answer = sock.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 401"), answer[:200]


def test_refusals_count_against_the_request_quota(fabriek_server):
    # 3 requests per minute: three refused ones spend them, so the fourth, valid, waits.
    refused = [post(fabriek_server, "quota-refusals", {"model": "no-such-model", "messages": QUESTION}).status_code
               for _ in range(2)]
    refused.append(post(fabriek_server, "quota-refusals", {"model": MODEL_ID, "messages": QUESTION,
                                                            "vllm_xargs": {}}).status_code)
    assert refused == [404, 404, 400]
    time.sleep(0.5)  # the refusals are counted fire and forget
    answer = post(fabriek_server, "quota-refusals", {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 2})
    assert answer.status_code == 429


# --- 8. No content in logs on error paths --------------------------------------------------

CANARY = "canary-7f3a9c-citizen-record"


def _error_probes() -> list[tuple[str, dict]]:
    chat = {"model": MODEL_ID, "max_tokens": 4}
    said = [{"role": "user", "content": f"My file is {CANARY}."}]
    return [
        ("invalid regex", {**chat, "messages": said, "structured_outputs": {"regex": f"({CANARY}"}}),
        ("invalid JSON schema", {**chat, "messages": said, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": CANARY}}}}),
        ("invalid grammar", {**chat, "messages": said, "structured_outputs": {"grammar": f"root ::= {CANARY} ("}}),
        ("prompt over the context", {**chat, "messages": [{"role": "user", "content": f"{CANARY} " * 3000}]}),
        ("bad field value", {**chat, "messages": said, "temperature": CANARY}),
        ("bad content part", {**chat, "messages": [{"role": "user", "content": [{"type": CANARY, "text": CANARY}]}]}),
        ("tool not defined", {**chat, "messages": said, "tools": [{"type": "function", "function": {
            "name": "lookup", "description": CANARY}}], "tool_choice": {"type": "function", "function": {"name": CANARY}}}),
    ]


@pytest.mark.parametrize(("what", "body"), _error_probes(), ids=[w for w, _ in _error_probes()])
def test_schema_grammar_and_validation_errors_are_400_never_500(fabriek_server, what, body):
    response = post(fabriek_server, "pilot-demo", body)
    assert response.status_code == 400, (what, response.text[:300])
    assert response.json()["error"]["type"] == "BadRequestError"


def test_error_paths_write_no_prompt_text_to_any_log(fabriek_server):
    for _, body in _error_probes():  # again, so this test stands alone
        post(fabriek_server, "pilot-demo", body)
        post(fabriek_server, "pilot-demo", {**body, "stream": True})
    time.sleep(3)  # replica logs are buffered (Ray Serve's throughput mode)
    leaks = [str(path) for domain in fabriek_server.clusters for path in fabriek_server.ray_logs_dir(domain).rglob("*")
             if path.is_file() and CANARY.encode() in path.read_bytes()]
    assert leaks == []
    assert CANARY not in "".join(fabriek_server.lines)


# --- 5. Stuck engines ------------------------------------------------------------------------

def test_a_stuck_engine_is_marked_not_ready_and_refused_fast_until_it_recovers(fabriek_server):
    """Freeze the commercial engine core (SIGSTOP, as a wedged device looks from the host):
    the front door's probe, which reaches the core, goes unanswered past the stall bound
    (30 s), so its tenants get a fast 503 instead of waiting on it; thawed, it serves again."""
    import signal

    import psutil

    family = psutil.Process(fabriek_server.process.pid).children(recursive=True)
    [replica] = [p for p in family if f"ServeReplica:commercial:commercial--{MODEL_ID}" in " ".join(p.cmdline())]
    [core] = [p for p in replica.children(recursive=True) if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    health = f"{fabriek_server.base_url('pilot-demo')}/health"
    assert httpx.get(health, timeout=10).status_code == 200
    core.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 90  # 30 s unanswered, seen within a round or two
        while httpx.get(health, timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "a frozen engine still counts as ready"
            time.sleep(0.5)
        started = time.monotonic()
        refused = post(fabriek_server, "pilot-demo", {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 2})
        assert refused.status_code == 503 and time.monotonic() - started < 5
        assert refused.headers["retry-after"]
        # The other domain never noticed.
        assert post(fabriek_server, "gov-demo", {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 2}
                    ).status_code == 200
    finally:
        core.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 180
    while httpx.get(health, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the thawed engine never became ready again"
        time.sleep(1)
    assert post(fabriek_server, "pilot-demo", {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 2}
                ).status_code == 200

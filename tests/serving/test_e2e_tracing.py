"""End to end: one request is one trace, from the client's ``traceparent`` through the front
door (the engine replica itself, in the shipped direct layout), admission and vLLM's own
request span, exported over OTLP.

The session's server sends its spans to the test's OTLP collector (tests/conftest.py).
"""

from __future__ import annotations

import json
import secrets

import grpc
import httpx
import openai

from serving.records.ledger import UsageLedger
from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub
from tests.otlp_collector import ReceivedSpan

MODEL = "smollm2-135m-instruct"
# The government domain's front door: its engine deployment (direct layout, serving.app).
FRONT_DOOR, CONTROLLER = "government--", "AdmissionController"
# Every hop of a request, by span name prefix: Ray Serve's, fabriek's and vLLM's.
HOPS = {f"replica_handle_request {FRONT_DOOR}", f"chat {MODEL}", "fabriek.admission",
        f"route_to_replica {CONTROLLER} acquire", f"replica_handle_request {CONTROLLER} acquire", "llm_request"}


def new_traceparent() -> tuple[str, str, str]:
    """A sampled W3C trace context, as a client's own tracer would send it."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def one(spans: list[ReceivedSpan], prefix: str) -> ReceivedSpan:
    [span] = [s for s in spans if s.name.startswith(prefix)]
    return span


def assert_one_tree(spans: list[ReceivedSpan], client_parent_id: str) -> None:
    """Every span hangs from another span of the trace, or from the client's span."""
    ids = {s.span_id for s in spans}
    orphans = [(s.name, s.parent_span_id) for s in spans if s.parent_span_id not in ids | {client_parent_id}]
    assert not orphans, orphans


def assert_no_content(spans: list[ReceivedSpan], *texts: str) -> None:
    exported = json.dumps([(s.name, s.attributes, s.events) for s in spans])
    for text in texts:
        assert text not in exported


def test_http_request_is_one_trace_from_ingress_to_vllm(fabriek_server, otlp_collector):
    trace_id, parent_id, traceparent = new_traceparent()
    marker = f"Vondelpark-{secrets.token_hex(4)}"
    client = openai.OpenAI(base_url=f"{fabriek_server.base_url('gov-demo')}/v1", api_key=fabriek_server.keys["gov-demo"],
                           default_headers={"traceparent": traceparent})
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": f"Describe the {marker} in one line."}],
        max_tokens=12, temperature=0)
    response = raw.parse()
    spans = otlp_collector.wait_for(trace_id, HOPS, parent_id)

    assert_one_tree(spans, parent_id)
    front_door, request = one(spans, f"replica_handle_request {FRONT_DOOR}"), one(spans, f"chat {MODEL}")
    assert front_door.parent_span_id == parent_id
    assert request.parent_span_id == front_door.span_id
    assert request.resource["service.name"] == "fabriek"
    attributes = request.attributes
    assert (attributes["gen_ai.operation.name"], attributes["gen_ai.request.model"]) == ("chat", MODEL)
    assert (attributes["fabriek.pool"], attributes["fabriek.tenant_class"]) == ("government", "government")
    assert attributes["fabriek.request_id"] == raw.headers["x-fabriek-request-id"]
    assert attributes["fabriek.replica"] == raw.headers["x-fabriek-replica"]
    assert attributes["gen_ai.usage.input_tokens"] == response.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == response.usage.completion_tokens
    assert attributes["fabriek.status_code"] == 200
    assert 0 <= attributes["fabriek.queue_time_s"] <= attributes["fabriek.time_to_first_token_s"]

    # Admission (the shared controller's lease) and the engine call both run inside the request.
    admission = one(spans, "fabriek.admission")
    assert admission.parent_span_id == request.span_id
    assert one(spans, f"route_to_replica {CONTROLLER} acquire").parent_span_id == admission.span_id
    # The engine runs in the front door's own process: no hop to another replica, and vLLM's
    # request span, from its own tracer, joins beneath the request.
    assert not [s for s in spans if s.name.startswith("route_to_replica government--")]
    vllm_request = one(spans, "llm_request")
    assert vllm_request.parent_span_id == request.span_id
    assert vllm_request.attributes["gen_ai.usage.completion_tokens"] == response.usage.completion_tokens
    assert_no_content(spans, marker, response.choices[0].message.content)
    # The usage record names the trace: from a bill to the request's path.
    ledger = UsageLedger(fabriek_server.ledger_url("gov-demo"))
    try:
        [record] = [r for r in ledger.records(tenant_id="gov-demo") if r.request_id == attributes["fabriek.request_id"]]
    finally:
        ledger.close()
    assert record.trace_id == trace_id


def test_grpc_request_joins_the_trace_of_its_metadata(fabriek_server, otlp_collector):
    trace_id, parent_id, traceparent = new_traceparent()
    marker = f"Rijksmuseum-{secrets.token_hex(4)}"
    with grpc.insecure_channel(fabriek_server.grpc_target("pilot-demo")) as channel:
        answer = InferenceServiceStub(channel).Chat(
            pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(role=pb.ROLE_USER, content=f"Where is {marker}?")],
                           sampling=pb.SamplingParams(max_tokens=8, temperature=0)),
            metadata=[*fabriek_server.grpc_metadata("pilot-demo"), ("traceparent", traceparent)], timeout=60)
    spans = otlp_collector.wait_for(trace_id, {f"chat {MODEL}", "replica_handle_request commercial--",
                                               "llm_request"}, parent_id)
    assert_one_tree(spans, parent_id)
    request = one(spans, f"chat {MODEL}")
    assert request.attributes["fabriek.protocol"] == "grpc"
    assert request.attributes["fabriek.pool"] == "commercial"
    assert request.attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert_no_content(spans, marker, answer.content)


def test_refused_request_span_names_its_reason(fabriek_server, otlp_collector):
    trace_id, parent_id, traceparent = new_traceparent()
    refused = httpx.post(f"{fabriek_server.base_url('quota-caps')}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 17},
        headers={"authorization": f"Bearer {fabriek_server.keys['quota-caps']}", "traceparent": traceparent})
    assert refused.status_code == 400
    spans = otlp_collector.wait_for(trace_id, {f"chat {MODEL}"})
    request = one(spans, f"chat {MODEL}")
    assert request.attributes["error.type"] == "request_too_large"
    assert request.status_code == 2  # STATUS_CODE_ERROR
    assert not [s for s in spans if s.name.startswith("route_to_replica commercial--")]  # no engine call

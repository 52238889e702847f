"""What government apps are built with, end to end: tool calling, structured outputs, model
lookup and embeddings, through the real `fabriek serve` with the unmodified `openai` client and
a real gRPC channel, with the errors a hostile or careless client meets.

The default model (SmolLM2-135M) rarely decides to call a tool by itself, so the `auto` tests
hold its output to a Hermes tool call with a regex (``structured_outputs``): the tool-call
parser (``tool_call_parser: hermes``) must then turn the text into a typed call, exactly as it
does for a model that chose the tool.
"""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import openai
import pytest
from google.protobuf import struct_pb2

from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub
from tests.conftest import MODEL_ID, DomainStubs
from tests.serving.test_e2e_hostile import finished_record

pytestmark = pytest.mark.e2e

EMBEDDING_MODEL = "multilingual-e5-small"
PERMIT_TOOL = {"type": "function", "function": {
    "name": "lookup_permit", "description": "Look up a building permit by its number",
    "parameters": {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]}}}
ASK = [{"role": "user", "content": "Look up permit 12"}]
HERMES_CALL = r'<tool_call>\n\{"name": "lookup_permit", "arguments": \{"number": "12"\}\}\n</tool_call>'


def client(server, tenant: str = "gov-demo") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url(tenant)}/v1", api_key=server.keys[tenant], max_retries=0)


@pytest.fixture(scope="module")
def gov(fabriek_server) -> openai.OpenAI:
    return client(fabriek_server)


@pytest.fixture(scope="module")
def stub(fabriek_server) -> DomainStubs:
    stubs = DomainStubs(fabriek_server).wait_until_ready(180)
    yield stubs
    stubs.close()


# --- tool calling ----------------------------------------------------------------------

@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "lookup_permit"}}, "required"])
def test_named_and_required_tool_choice_return_a_typed_call(gov, choice):
    tool = {**PERMIT_TOOL, "function": {**PERMIT_TOOL["function"], "strict": True}}
    answer = gov.chat.completions.create(model=MODEL_ID, messages=ASK, tools=[tool], tool_choice=choice,
                                         max_tokens=60, temperature=0)
    [call] = answer.choices[0].message.tool_calls
    assert call.function.name == "lookup_permit"
    assert isinstance(json.loads(call.function.arguments)["number"], str)  # strict: the schema holds


def test_auto_tool_choice_parses_the_models_call(gov, fabriek_server):
    raw = gov.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=ASK, tools=[PERMIT_TOOL], tool_choice="auto", max_tokens=60, temperature=0,
        extra_body={"structured_outputs": {"regex": HERMES_CALL}})
    answer = raw.parse()
    assert answer.choices[0].finish_reason == "tool_calls"
    [call] = answer.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup_permit", {"number": "12"})
    record = finished_record(fabriek_server, "gov-demo", raw.headers["x-fabriek-request-id"])
    assert record.status_code == 200 and record.completion_tokens == answer.usage.completion_tokens > 0


def test_streamed_tool_call_arrives_in_pieces_that_join_to_the_call(gov):
    stream = gov.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=[PERMIT_TOOL], tool_choice="auto", max_tokens=60, temperature=0,
        stream=True, extra_body={"structured_outputs": {"regex": HERMES_CALL}})
    names, arguments, finish = [], "", None
    for chunk in stream:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                names += [piece.function.name] if piece.function and piece.function.name else []
                arguments += (piece.function.arguments or "") if piece.function else ""
            finish = choice.finish_reason or finish
    assert names == ["lookup_permit"] and json.loads(arguments) == {"number": "12"} and finish == "tool_calls"


def test_a_conversation_with_a_tool_result_goes_on(gov):
    call = {"id": "call-1", "type": "function",
            "function": {"name": "lookup_permit", "arguments": json.dumps({"number": "12"})}}
    answer = gov.chat.completions.create(model=MODEL_ID, max_tokens=20, temperature=0, tools=[PERMIT_TOOL], messages=[
        *ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call-1", "content": '{"status": "granted"}'}])
    assert answer.choices[0].message.content


@pytest.mark.parametrize("fields, param", [
    ({"tools": [PERMIT_TOOL], "tool_choice": {"type": "function", "function": {"name": "delete_everything"}}},
     "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "lookup_permit"}}}, "tool_choice"),
    ({"tools": [PERMIT_TOOL] * 129}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {"description": "y" * 70_000}}}]},
     "tools"),
])
def test_tool_requests_the_platform_refuses_are_400s(gov, fields, param):
    with pytest.raises(openai.BadRequestError) as refused:
        gov.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=8, **fields)
    assert refused.value.body["param"] == param or param in refused.value.body["message"]


# --- structured outputs ------------------------------------------------------------------

def test_json_schema_response_format_holds(gov):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    answer = gov.chat.completions.create(
        model=MODEL_ID, max_tokens=40, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of the Netherlands? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema, "strict": True}})
    city = json.loads(answer.choices[0].message.content)["city"]
    assert isinstance(city, str) and len(city) <= 20


@pytest.mark.parametrize("form", [{"choice": ["ja", "nee"]}, {"regex": "[0-9]{4} ?[A-Z]{2}"}])
def test_guided_forms_hold(gov, form):
    answer = gov.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Postcode?"}],
                                         max_tokens=10, temperature=0, extra_body={"structured_outputs": form})
    text = answer.choices[0].message.content
    assert text in form["choice"] if "choice" in form else len(text) in (6, 7)


@pytest.mark.parametrize("form, why", [({"json": {"type": "object"}, "_backend": "outlines"}, "not offered"),
                                       ({"choice": [str(i) for i in range(300)]}, "at most 256"),
                                       ({"regex": "a" * 20_000}, "larger than")])
def test_structured_output_forms_out_of_bounds_are_400s(gov, form, why):
    with pytest.raises(openai.BadRequestError, match=why):
        gov.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=8, extra_body={"structured_outputs": form})


# --- GET /v1/models/{id} -----------------------------------------------------------------

def test_a_model_of_ones_own_is_retrievable(gov):
    model = gov.models.retrieve(MODEL_ID)
    assert (model.id, model.owned_by, model.max_model_len) == (MODEL_ID, "fabriek", 2048)
    assert gov.models.retrieve(EMBEDDING_MODEL).max_model_len == 512


@pytest.mark.parametrize("tenant, model", [("pilot-demo", EMBEDDING_MODEL), ("gov-demo", "gpt-4o"),
                                           ("gov-demo", "../../v1/models"), ("gov-demo", "x" * 300)])
def test_other_and_absent_models_are_404(fabriek_server, tenant, model):
    with pytest.raises(openai.NotFoundError):
        client(fabriek_server, tenant).models.retrieve(model)


def test_model_lookup_needs_a_key(fabriek_server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{fabriek_server.base_url('gov-demo')}/v1", api_key="sk-nope",
                      max_retries=0).models.retrieve(MODEL_ID)


# --- embeddings --------------------------------------------------------------------------

DUTCH = ["query: Waar kan ik een paspoort aanvragen?", "query: Hoe vraag ik een paspoort aan?",
         "query: Het weer is mooi vandaag."]


def test_embeddings_place_dutch_paraphrases_together(gov, fabriek_server):
    raw = gov.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=DUTCH)
    answer = raw.parse()
    vectors = np.array([d.embedding for d in sorted(answer.data, key=lambda d: d.index)])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.9 > similarity[0, 2] + 0.1
    assert raw.headers["x-fabriek-pool"] == "government-embeddings"
    record = finished_record(fabriek_server, "gov-demo", raw.headers["x-fabriek-request-id"])
    assert (record.status_code, record.pool, record.model) == (200, "government-embeddings", EMBEDDING_MODEL)
    assert record.prompt_tokens == answer.usage.prompt_tokens > 3 * 5 and record.completion_tokens == 0


def test_embeddings_base64_and_default_model(fabriek_server):
    import httpx
    answer = httpx.post(f"{fabriek_server.base_url('gov-demo')}/v1/embeddings", timeout=60,
                        headers={"Authorization": f"Bearer {fabriek_server.keys['gov-demo']}"},
                        json={"input": "passage: Paspoorten vraagt u aan bij de gemeente.", "encoding_format": "base64"})
    assert answer.status_code == 200, answer.text
    body = answer.json()  # no `model`: the tenant's only embedding model
    assert body["model"] == EMBEDDING_MODEL and isinstance(body["data"][0]["embedding"], str)


@pytest.mark.parametrize("fields, status, why", [
    ({"model": MODEL_ID, "input": "x"}, 400, "does not answer this endpoint"),
    ({"model": EMBEDDING_MODEL, "input": []}, 400, "must be a text"),
    ({"model": EMBEDDING_MODEL, "input": [{"role": "user", "content": "x"}]}, 400, "must be a text"),
    ({"model": EMBEDDING_MODEL, "input": ["x"] * 65}, 400, "at most 64"),
    ({"model": EMBEDDING_MODEL, "input": [[2**40]]}, 400, "token id"),
    ({"model": EMBEDDING_MODEL, "input": "x", "cache_salt": "mine"}, 400, "cache_salt"),
    ({"model": "gpt-4o", "input": "x"}, 404, "does not exist"),
])
def test_embedding_requests_the_platform_refuses(fabriek_server, fields, status, why):
    import httpx
    answer = httpx.post(f"{fabriek_server.base_url('gov-demo')}/v1/embeddings", json=fields, timeout=60,
                        headers={"Authorization": f"Bearer {fabriek_server.keys['gov-demo']}"})
    assert answer.status_code == status and why in answer.json()["error"]["message"], answer.text


def test_a_chat_model_is_not_an_embedding_model(gov):
    with pytest.raises(openai.BadRequestError, match="does not answer this endpoint"):
        gov.chat.completions.create(model=EMBEDDING_MODEL, messages=ASK, max_tokens=4)


def test_commercial_tenants_have_no_government_embeddings(fabriek_server):
    with pytest.raises(openai.NotFoundError):
        client(fabriek_server, "pilot-demo").embeddings.create(model=EMBEDDING_MODEL, input="x")


def test_token_quota_counts_embedding_input(fabriek_server):
    """A tenant of 200 tokens a minute: long inputs spend it, then 429."""
    tenant = client(fabriek_server, "gov-embed-tpm")
    text = "passage: " + "De gemeente geeft paspoorten en identiteitskaarten af. " * 8
    refused = None
    for _ in range(6):
        try:
            tenant.embeddings.create(model=EMBEDDING_MODEL, input=text)
        except openai.RateLimitError as err:
            refused = err
            break
    assert refused is not None and "token" in str(refused).lower()


# --- gRPC ----------------------------------------------------------------------------------

def metadata(server, tenant: str = "gov-demo"):
    return server.grpc_metadata(tenant)


def _permit_tool(strict: bool = True) -> pb.Tool:
    parameters = struct_pb2.Struct()
    parameters.update(PERMIT_TOOL["function"]["parameters"])
    return pb.Tool(name="lookup_permit", description="Look up a building permit", parameters=parameters,
                   strict=strict)


def test_grpc_named_tool_call_is_typed(stub, fabriek_server):
    request = pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="Permit 12?")],
                             sampling=pb.SamplingParams(max_tokens=60, temperature=0), tools=[_permit_tool()],
                             tool_choice=pb.ToolChoice(function_name="lookup_permit"))
    response = stub.Chat(request, metadata=metadata(fabriek_server), timeout=120)
    [call] = response.tool_calls
    assert call.name == "lookup_permit" and isinstance(json.loads(call.arguments)["number"], str)


def test_grpc_streamed_tool_call_deltas_join(stub, fabriek_server):
    request = pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="Permit 12?")],
                             sampling=pb.SamplingParams(max_tokens=60, temperature=0), tools=[_permit_tool()],
                             tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED))
    messages = list(stub.ChatStream(request, metadata=metadata(fabriek_server), timeout=120))
    deltas = [d for m in messages for d in m.tool_call_deltas]
    assert [d.name for d in deltas if d.name] == ["lookup_permit"]
    assert isinstance(json.loads("".join(d.arguments_delta for d in deltas))["number"], str)
    assert messages[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS and messages[-1].usage.completion_tokens > 0


def test_grpc_tool_results_and_json_schema(stub, fabriek_server):
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"status": {"type": "string", "maxLength": 12}},
                   "required": ["status"]})
    request = pb.ChatRequest(
        model=MODEL_ID, sampling=pb.SamplingParams(max_tokens=40, temperature=0), tools=[_permit_tool()],
        tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE),
        response_format=pb.ResponseFormat(json_schema=pb.JsonSchema(name="status", schema=schema, strict=True)),
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content="Permit 12?"),
                  pb.ChatMessage(role=pb.ROLE_ASSISTANT, tool_calls=[
                      pb.ToolCall(id="c1", name="lookup_permit", arguments='{"number": "12"}')]),
                  pb.ChatMessage(role=pb.ROLE_TOOL, tool_call_id="c1", content='{"status": "granted"}')])
    response = stub.Chat(request, metadata=metadata(fabriek_server), timeout=120)
    assert len(json.loads(response.content)["status"]) <= 12 and not response.tool_calls


@pytest.mark.parametrize("request_, why", [
    (pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="x")],
                    tools=[_permit_tool()], tool_choice=pb.ToolChoice(function_name="rm_rf")), "does not define"),
    (pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_TOOL, content="x")]), "tool_call_id"),
    (pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="x", tool_calls=[
        pb.ToolCall(id="c", name="n", arguments="{}")])]), "only an assistant"),
])
def test_grpc_bad_tool_requests_are_invalid_argument(stub, fabriek_server, request_, why):
    with pytest.raises(grpc.RpcError) as failed:
        stub.Chat(request_, metadata=metadata(fabriek_server), timeout=60)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in failed.value.details()


def test_grpc_embed(stub, fabriek_server):
    since = time.time()
    response, call = stub.Embed.with_call(pb.EmbedRequest(model=EMBEDDING_MODEL, inputs=DUTCH),
                                          metadata=metadata(fabriek_server), timeout=60)
    vectors = np.array([e.values for e in response.embeddings])
    assert vectors.shape == (3, 384) and (vectors @ vectors.T)[0, 1] > 0.9
    assert response.usage.prompt_tokens > 15 and response.usage.completion_tokens == 0
    assert dict(call.trailing_metadata())["x-fabriek-pool"] == "government-embeddings"
    record = finished_record(fabriek_server, "gov-demo", since=since, protocol="grpc")
    assert record.prompt_tokens == response.usage.prompt_tokens and record.model == EMBEDDING_MODEL


@pytest.mark.parametrize("tenant, request_, code", [
    ("gov-demo", pb.EmbedRequest(model=EMBEDDING_MODEL), grpc.StatusCode.INVALID_ARGUMENT),
    ("gov-demo", pb.EmbedRequest(model=MODEL_ID, inputs=["x"]), grpc.StatusCode.INVALID_ARGUMENT),
    ("gov-demo", pb.EmbedRequest(model=EMBEDDING_MODEL, inputs=["x"] * 65), grpc.StatusCode.INVALID_ARGUMENT),
    ("pilot-demo", pb.EmbedRequest(model=EMBEDDING_MODEL, inputs=["x"]), grpc.StatusCode.NOT_FOUND),
])
def test_grpc_embed_errors(stub, fabriek_server, tenant, request_, code):
    with pytest.raises(grpc.RpcError) as failed:
        stub.Embed(request_, metadata=metadata(fabriek_server, tenant), timeout=60)
    assert failed.value.code() == code


# --- the Responses API ---------------------------------------------------------------------

def test_responses_answer_and_are_not_stored(gov, fabriek_server):
    raw = gov.responses.with_raw_response.create(model=MODEL_ID, input="What is the capital of the Netherlands?",
                                                 max_output_tokens=16, temperature=0)
    answer = raw.parse()
    assert answer.output_text and answer.status in ("completed", "incomplete")
    assert answer.id and not raw.http_response.json().get("store")  # no response state on this platform
    record = finished_record(fabriek_server, "gov-demo", raw.headers["x-fabriek-request-id"])
    assert (record.prompt_tokens, record.completion_tokens) == (answer.usage.input_tokens,
                                                                answer.usage.output_tokens)


def test_streamed_responses_end_with_their_usage_in_the_ledger(gov, fabriek_server):
    since = time.time()
    events = list(gov.responses.create(model=MODEL_ID, input="Name a Dutch city.", max_output_tokens=12,
                                       temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    usage = events[-1].response.usage
    assert text and usage.output_tokens > 0
    record = finished_record(fabriek_server, "gov-demo", since=since, protocol="http")
    assert (record.prompt_tokens, record.completion_tokens) == (usage.input_tokens, usage.output_tokens)


@pytest.mark.parametrize("fields, param", [({"previous_response_id": "resp_123"}, "previous_response_id"),
                                           ({"store": True}, "store"), ({"background": True}, "background"),
                                           ({"cache_salt": "x"}, "cache_salt")])
def test_responses_state_and_platform_fields_are_refused(gov, fields, param):
    with pytest.raises(openai.BadRequestError) as refused:
        gov.responses.create(model=MODEL_ID, input="hi", max_output_tokens=4, extra_body=fields)
    assert refused.value.body["param"] == param


def test_responses_for_an_embedding_model_or_anothers_model(fabriek_server, gov):
    with pytest.raises(openai.BadRequestError, match="does not answer this endpoint"):
        gov.responses.create(model=EMBEDDING_MODEL, input="hi")
    with pytest.raises(openai.NotFoundError):
        client(fabriek_server, "pilot-demo").responses.create(model=EMBEDDING_MODEL, input="hi")

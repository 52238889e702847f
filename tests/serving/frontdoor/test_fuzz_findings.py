"""Requests the API fuzz (loadtests/fuzz_api.py) found answered 500 or INTERNAL: now each is a
400 (INVALID_ARGUMENT over gRPC) naming the field, before any engine sees it."""

from __future__ import annotations

import asyncio

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.requests import Request

from serving.frontdoor.errors import APIError
from serving.frontdoor.grpc_messages import completion_request
from serving.frontdoor.openai_requests import read_json_object, validate_openai_request
from serving.protos.fabriek.v1 import inference_pb2 as pb

HOI = [{"role": "user", "content": "hoi"}]


def read(body: bytes) -> dict:
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    return asyncio.run(read_json_object(Request({"type": "http", "method": "POST", "headers": []}, receive), 1 << 20))


@pytest.mark.parametrize("body", [
    # Half a UTF-16 pair: no tokenizer encodes it (TypeError in the ingress, EngineGenerateError in
    # the engine: both were 500s), wherever it sits.
    rb'{"prompt": "a\ud800"}',
    rb'{"messages": [{"role": "user", "content": "\uDFFF"}]}',
    rb'{"prompt": "a", "stop": ["\udc00\udc00"]}',
    rb'{"prompt": "a", "bad_words": ["x"], "\ud83d": 1}',
    rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d x"}]}]}',
])
def test_a_lone_surrogate_escape_is_400(body):
    with pytest.raises(APIError) as raised:
        read(body)
    assert raised.value.status == 400 and "surrogate" in raised.value.message


def test_an_escaped_surrogate_pair_is_one_character():
    assert read(rb'{"prompt": "\ud83d\ude00 \u00e9"}')["prompt"] == "\U0001f600 \u00e9"


@pytest.mark.parametrize(("body", "model", "method", "param"), [
    # vLLM's validators raise VLLMValidationError, which pydantic lets out: was a 500.
    ({"prompt": None}, CompletionRequest, "completions", "prompt"),
    ({"prompt": ""}, CompletionRequest, "completions", "prompt"),
    ({"messages": HOI, "tool_choice": "required"}, ChatCompletionRequest, "chat", "tool_choice"),
    ({"messages": HOI, "structured_outputs": {"regex": "a", "json": "b"}}, ChatCompletionRequest, "chat", None),
    # A message without `role` passes vLLM's model (as harmony's `Message`) and raised KeyError
    # in the engine's renderer: was a 500 from the engine.
    ({"messages": [{"author": {"role": "user"}, "content": []}]}, ChatCompletionRequest, "chat", "messages.0.role"),
    ({"messages": [*HOI, {"author": {"role": "tool"}, "recipient": "x", "content": []}]}, ChatCompletionRequest,
     "chat", "messages.1.role"),
])
def test_found_by_fuzz_is_400_naming_the_field(body, model, method, param):
    with pytest.raises(APIError) as raised:
        validate_openai_request(body, model, method, 4)
    assert raised.value.status == 400
    assert raised.value.param == param
    assert raised.value.message.startswith("invalid request body: ")


def test_vllm_validation_messages_leave_the_value_out():
    secret = "BSN 123456782 of citizen"
    with pytest.raises(APIError) as raised:
        validate_openai_request({"prompt": "", "user": secret}, CompletionRequest, "completions", 4)
    assert "value=" not in raised.value.message and secret not in raised.value.message


def test_an_empty_grpc_prompt_is_invalid_argument_not_internal():
    with pytest.raises(APIError) as raised:
        completion_request(pb.CompletionRequest(), stream=True, max_sequences=4)
    assert raised.value.status == 400 and raised.value.param == "prompt"

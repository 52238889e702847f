"""Every field of the `openai` package's own request types is either offered or refused
with its reason: an SDK (the OpenAI Agents SDK sends `include` and `reasoning` on every
Responses call) never meets a bare "unrecognized argument" for a documented field."""

from __future__ import annotations

import typing

import pytest
from openai.types import completion_create_params, embedding_create_params
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.responses import response_create_params
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

from routers.request_shape import ALLOWED_FIELDS, REFUSED_FIELDS, check_fields
from serving.frontdoor.errors import APIError
from serving.frontdoor.openai_requests import validate_openai_request

OPENAI_TYPES = {
    "chat": chat_create_params.CompletionCreateParamsBase,
    "completions": completion_create_params.CompletionCreateParamsBase,
    "embeddings": embedding_create_params.EmbeddingCreateParams,
    "responses": response_create_params.ResponseCreateParamsBase,
}
# OpenAI fields that chat offers but the method does not, where vLLM's model has no such field:
# refused with the plain "unrecognized" message (a reason by name would also hit chat's).
UNRECOGNIZED = {"responses": {"stream_options"}}


@pytest.mark.parametrize("method", sorted(OPENAI_TYPES))
def test_every_openai_field_is_offered_or_refused_with_a_reason(method):
    fields = set(typing.get_type_hints(OPENAI_TYPES[method]))
    unaccounted = fields - ALLOWED_FIELDS[method] - set(REFUSED_FIELDS) - UNRECOGNIZED.get(method, set())
    assert not unaccounted, f"{method}: offer these or give a reason in REFUSED_FIELDS"
    for name in fields - ALLOWED_FIELDS[method]:
        refused = check_fields(method, {name: None})
        assert refused is not None and refused.param == name
        if name not in UNRECOGNIZED.get(method, set()):
            assert refused.message.endswith(f"({REFUSED_FIELDS[name]})")


def test_what_the_agents_sdk_sends_on_a_responses_call_is_accepted():
    body = {"model": "m", "input": [{"role": "user", "content": "hoi"}], "include": ["reasoning.encrypted_content"],
            "reasoning": {"effort": "low"}, "store": False, "stream": False, "top_logprobs": 2,
            "max_tool_calls": 3, "tools": [], "parallel_tool_calls": False}
    parsed, _ = validate_openai_request(body, ResponsesRequest, "responses", 4)
    assert parsed.include == ["reasoning.encrypted_content"] and parsed.top_logprobs == 2


@pytest.mark.parametrize(("field", "value", "param"), [
    ("include", ["everything.please"], "include.0"),
    ("include", "message.output_text.logprobs", "include"),
    ("top_logprobs", 21, "top_logprobs"),
    ("max_tool_calls", -1, "max_tool_calls"),
])
def test_hostile_values_of_the_new_responses_fields_are_400s(field, value, param):
    body = {"model": "m", "input": "hoi", field: value}
    with pytest.raises(APIError) as caught:
        validate_openai_request(body, ResponsesRequest, "responses", 4)
    assert caught.value.status == 400 and caught.value.param == param

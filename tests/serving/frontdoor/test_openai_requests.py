"""Parsing OpenAI bodies: every malformed body is a 400 APIError, never a 500."""

from __future__ import annotations

import asyncio
import json

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.requests import Request

from serving.frontdoor.errors import APIError
from serving.frontdoor.openai_requests import read_json_object, validate_openai_request


def request_with(body: bytes) -> Request:
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def parse(body: bytes, model=ChatCompletionRequest, max_sequences=4):
    data = asyncio.run(read_json_object(request_with(body), 1 << 20))
    method = "chat" if model is ChatCompletionRequest else "completions"
    return validate_openai_request(data, model, method, max_sequences)[0]


def test_valid_chat_request_parses():
    parsed = parse(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hoi"}]}).encode())
    assert parsed.model == "m" and parsed.messages[0]["content"] == "hoi"


@pytest.mark.parametrize(("body", "message"), [
    (b"{", "not valid JSON"),
    (b'"a string"', "must be a JSON object"),
    (b'{"model": "m"}', "messages: Field required"),
    (b'{"model": "m", "messages": 5}', "invalid request body"),
    (b'{"model": "m", "messages": [], "max_tokens": "many"}', "max_tokens"),
    (b"[" * 100_000, "not valid JSON"),                                       # RecursionError
    (b'{"model": "m", "messages": [], "structured_outputs": "x"}', "invalid request body"),
    (b'{"model": "m", "messages": [], "tools": [{}], "tool_choice": {"type": "function", '
     b'"function": {"name": "f"}}}', "which `tools` does not define"),
    # Fields vLLM would pass to the engine, but the platform does not offer.
    (b'{"model": "m", "messages": [], "kv_transfer_params": {"do_remote_prefill": true}}',
     "Unrecognized request argument supplied: kv_transfer_params"),
    (b'{"model": "m", "messages": [], "vllm_xargs": {"x": 1}}', "Unrecognized request argument supplied: vllm_xargs"),
    (b'{"model": "m", "messages": [], "return_prompt_text": true}', "return_prompt_text"),
    (b'{"model": "m", "messages": [], "cache_salt": "other-tenant"}', "cache_salt"),
    (b'{"model": "m", "messages": [], "priority": -100}', "priority"),
    (b'{"model": "m", "messages": [], "chat_template": "{{ 9**9**9 }}"}', "chat_template"),
    (b'{"model": "m", "messages": [], "n": 64}', "at most 4"),
    (b'{"model": "m", "messages": [], "n": 0}', "at least 1"),
    (b'{"model": "m", "messages": [], "n": -3}', "out of range"),
    (b'{"model": "m", "messages": [], "max_tokens": 99999999999}', "out of range"),
    (b'{"model": "m", "messages": [], "top_logprobs": 1000}', "at most 20"),
    (b'{"model": "m", "messages": [], "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", '
     b'"m", "n", "o", "p", "q"]}', "at most 16"),
    (b'{"model": "' + b"m" * 300 + b'", "messages": []}', "longer than 256"),
])
def test_malformed_chat_bodies_are_400(body, message):
    with pytest.raises(APIError) as raised:
        parse(body)
    assert raised.value.status == 400
    assert message in raised.value.message


def test_completion_with_bad_max_tokens_is_400():
    with pytest.raises(APIError) as raised:
        parse(b'{"model": "m", "prompt": "hoi", "max_tokens": "lots"}', CompletionRequest)
    assert raised.value.status == 400


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "messages": [], "use_beam_search": True, "n": 8}, "n"),
    ({"model": "m", "messages": [], "response_format": {"type": "json_schema", "json_schema": {
        "name": "big", "schema": {"enum": ["x" * 100] * 200}}}}, "response_format"),
    ({"model": "m", "messages": [], "structured_outputs": {"regex": "a" * 20_000}}, "structured_outputs"),
    ({"model": "m", "messages": [], "logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"model": "m", "messages": [], "allowed_token_ids": list(range(2000))}, "allowed_token_ids"),
])
def test_bounds_name_the_field(body, param):
    with pytest.raises(APIError) as raised:
        parse(json.dumps(body).encode())
    assert raised.value.status == 400 and raised.value.param == param


def test_prompt_lists_count_as_sequences():
    with pytest.raises(APIError) as raised:
        parse(json.dumps({"model": "m", "prompt": ["hoi"] * 256}).encode(), CompletionRequest)
    assert raised.value.param == "prompt"
    data = {"model": "m", "prompt": ["a", "b"], "n": 2}
    assert validate_openai_request(data, CompletionRequest, "completions", 4)[1].sequences == 4
    token_ids = {"model": "m", "prompt": [1, 2, 3]}  # one prompt of token ids
    assert validate_openai_request(token_ids, CompletionRequest, "completions", 1)[1].sequences == 1


def test_validation_errors_do_not_quote_content():
    secret = "BSN 123456782 of citizen"
    with pytest.raises(APIError) as raised:
        parse(json.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "nope", "x": secret}]}],
                          "temperature": secret}).encode())
    assert secret not in raised.value.message
    with pytest.raises(APIError) as raised:
        parse(json.dumps({"model": "m", "messages": [], "max_tokens": secret}).encode())
    assert secret not in raised.value.message


def test_every_offered_field_is_known_to_vllm():
    """The allowlist names fields of vLLM's own request models: a rename in vLLM fails here."""
    from routers.request_shape import ALLOWED_FIELDS
    for method, model in (("chat", ChatCompletionRequest), ("completions", CompletionRequest)):
        assert ALLOWED_FIELDS[method] <= set(model.model_fields), method


@pytest.mark.parametrize("prompt", [[1, 1285626818286552612864], [[5, -1]], [2**31]])
def test_token_ids_out_of_range_are_400(prompt):
    with pytest.raises(APIError) as raised:
        parse(json.dumps({"model": "m", "prompt": prompt, "echo": True}).encode(), CompletionRequest)
    assert raised.value.param == "prompt"

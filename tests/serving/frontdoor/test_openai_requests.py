"""Parsing OpenAI bodies: every malformed body is a 400 APIError, never a 500."""

from __future__ import annotations

import asyncio
import json

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.requests import Request

from serving.frontdoor.errors import APIError
from serving.frontdoor.openai_requests import parse_openai_request


def request_with(body: bytes) -> Request:
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def parse(body: bytes, model=ChatCompletionRequest):
    return asyncio.run(parse_openai_request(request_with(body), model))


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
     b'"function": {"name": "f"}}}', "invalid request body"),
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

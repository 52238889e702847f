"""Parsing OpenAI requests (HTTP bodies, gRPC messages) into vLLM's protocol models, with 400s that explain.

Before vLLM's models see a request, the policy core checks its fields against the platform's
allowlist and its bounds (``routers.request_shape``): vLLM's models accept any extra field.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from vllm.exceptions import VLLMClientError

from routers.request_shape import RequestShape, ShapeError, check_fields, check_shape
from serving.frontdoor.body_limit import BodyTooLarge
from serving.frontdoor.errors import APIError

RequestModel = TypeVar("RequestModel", bound=BaseModel)


async def read_json_object(request: Request, max_bytes: int) -> dict:
    """The JSON object in the body of ``request``, read only now (after the key was checked).

    Raises:
        APIError: 413 over ``max_bytes``; 400 for a body that is not JSON or not an object.
    """
    try:
        raw = await request.body()
    except BodyTooLarge:
        raise APIError(413, f"request body exceeds the limit of {max_bytes} bytes") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly nested JSON
        # The decoder's message quotes no content, only a position.
        raise APIError(400, f"request body is not valid JSON: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    # JSON may escape half a UTF-16 pair ("\ud800"): Python decodes it to a string that no
    # tokenizer or engine can encode (a 500 from each). A valid pair ("\ud83d\ude00") is one
    # character and passes; only bodies with such an escape at all pay for the check.
    if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(data):
        raise APIError(400, "request body is not valid JSON text: a \\u escape names half a UTF-16 "
                       "surrogate pair")
    return data


def _has_lone_surrogate(data: dict) -> bool:
    """Whether a key or string anywhere in ``data`` holds a lone surrogate (iteratively: the
    body may nest as deep as the decoder allowed)."""
    pending: list = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def validate_openai_request(data: dict, model: type[RequestModel], method: str,
                            max_sequences: int, stores_responses: bool = False) -> tuple[RequestModel, RequestShape]:
    """Check request fields (from a JSON body or a gRPC message) against the platform's
    allowlist and bounds, then validate them as ``model``.

    Args:
        method: ``chat`` or ``completions``.
        max_sequences: the tenant class's bound on sequences per request.
        stores_responses: the tenant class keeps its responses (``routers.request_shape``).

    Raises:
        APIError: 400 naming the first field refused or invalid.
    """
    shape = (check_fields(method, data, stores_responses)
             or check_shape(method, data, max_sequences, stores_responses))
    if isinstance(shape, ShapeError):
        raise APIError(400, shape.message, param=shape.param)
    try:
        body = model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"invalid request body: {_summarize(err)}", param=param) from None
    except VLLMClientError as err:
        # vLLM's "before" validators raise this (not a ValueError, so pydantic lets it out):
        # e.g. no prompt, `tool_choice` without `tools`, two kinds of structured output. Its
        # message is shown as pydantic's "Value error" messages of the same validators are;
        # `value=` (the rejected value, perhaps a prompt) is left out.
        message = str(err.args[0]) if err.args else type(err).__name__
        message = message if len(message) <= 200 else message[:200] + "..."
        raise APIError(400, f"invalid request body: {message}", param=getattr(err, "parameter", None)) from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
        # vLLM's "before" validators index into fields before their types are checked,
        # so a malformed body can surface as any of these instead of a ValidationError.
        # Their messages may quote the value: only the type reaches the client, no content.
        raise APIError(400, f"invalid request body ({type(err).__name__})") from None
    if method == "chat":
        _check_roles(data)
    return body, shape


def _check_roles(data: dict) -> None:
    """Every message names its role: vLLM's renderer reads ``message["role"]`` (a KeyError in
    the engine, a 500, without one), while its request model lets such a message through
    (one of its message types, harmony's, keeps the role under ``author``)."""
    messages = data.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        if isinstance(message, dict) and not isinstance(message.get("role"), str):
            raise APIError(400, f"invalid request body: messages.{i}.role: Field required",
                           param=f"messages.{i}.role")


def _summarize(err: ValidationError, limit: int = 3) -> str:
    """Where and what, never the input: pydantic's messages name types and constraints, and
    ``input`` (the value itself, perhaps a prompt) is left out."""
    parts = []
    for problem in err.errors(include_input=False, include_url=False)[:limit]:
        where = ".".join(str(p) for p in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        message = message if len(message) <= 200 else message[:200] + "..."
        parts.append(f"{where}: {message}" if where else message)
    more = err.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")

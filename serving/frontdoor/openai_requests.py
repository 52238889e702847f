"""Parsing OpenAI requests (HTTP bodies, gRPC messages) into vLLM's protocol models, with 400s that explain."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from serving.frontdoor.errors import APIError

RequestModel = TypeVar("RequestModel", bound=BaseModel)


async def parse_openai_request(request: Request, model: type[RequestModel]) -> RequestModel:
    """Read the JSON body of `request` and validate it as `model`.

    Raises:
        APIError: 400 for a body that is not JSON, not an object, or not a valid `model`.
    """
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly nested JSON
        raise APIError(400, f"request body is not valid JSON: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    return validate_openai_request(data, model)


def validate_openai_request(data: dict, model: type[RequestModel]) -> RequestModel:
    """Validate request fields (from a JSON body or a gRPC message) as `model`.

    Raises:
        APIError: 400 naming the first invalid field.
    """
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"invalid request body: {_summarize(err)}", param=param) from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
        # vLLM's "before" validators index into fields before their types are checked,
        # so a malformed body can surface as any of these instead of a ValidationError.
        raise APIError(400, f"invalid request body: {type(err).__name__}: {err}") from None


def _summarize(err: ValidationError, limit: int = 3) -> str:
    parts = []
    for problem in err.errors()[:limit]:
        where = ".".join(str(p) for p in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    more = err.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")

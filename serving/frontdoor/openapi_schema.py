"""The HTTP API's OpenAPI document: request bodies, the bearer key and the error answers.

The completion routes read their bodies themselves (the key is checked before a body byte
is read), so FastAPI cannot derive their schemas from a parameter. Here they come from
vLLM's own request models, cut down to the fields the platform offers
(``routers.request_shape.ALLOWED_FIELDS``) and closed (``additionalProperties: false``),
since any other field is a 400. Only the document changes: no route parses anything here.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Mapping

from fastapi import FastAPI
from pydantic import BaseModel
from ray.llm._internal.serve.core.configs.openai_api_models import EmbeddingCompletionRequest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from routers.request_shape import ALLOWED_FIELDS

# The request model of each completion method, as the ingress validates it.
REQUEST_MODELS: Mapping[str, type[BaseModel]] = {"chat": ChatCompletionRequest, "completions": CompletionRequest,
                                                  "embeddings": EmbeddingCompletionRequest,
                                                  "responses": ResponsesRequest}
# Fields the document requires beyond the model's own: vLLM's completions accept
# `prompt_embeds` instead of `prompt`, but the platform does not offer them.
_ALSO_REQUIRED = {"completions": ("prompt",), "embeddings": ("input",)}

SECURITY_SCHEME = "bearerAuth"
_BEARER = {"type": "http", "scheme": "bearer",
           "description": "A tenant's API key (`fabriek keys create --tenant TENANT`)."}
_REF_PREFIX = "#/components/schemas/"

# Why each error status happens (README, "The HTTP API"); every one has the OpenAI error body.
_ERRORS = {
    400: "Body not JSON, not an object or not a valid request; a field the platform does not offer; "
         "over the tenant's caps (`max_tokens`, prompt) or the model's context",
    401: "No key, a malformed `Authorization` header, or an unknown, revoked or other domain's key",
    403: "No pool of the tenant's class serves the model (a config mistake)",
    404: "The model does not exist, or the tenant may not use it",
    413: "Body larger than the platform's limit",
    429: "Over the tenant's quota (`Retry-After` says when it frees)",
    503: "The tenant's pool is loading, not answering, or full (`Retry-After` set)",
    504: "The request exceeded its class's time limit",
}
_COMPLETION_ERRORS = (400, 401, 403, 404, 413, 429, 503, 504)


def restricted_schema(method: str) -> tuple[dict[str, Any], dict[str, dict]]:
    """The JSON schema of ``method``'s request body with only the offered fields, and the
    component schemas it refers to (``#/components/schemas/NAME``).

    Args:
        method: ``chat`` or ``completions``.
    """
    model = REQUEST_MODELS[method]
    full = model.model_json_schema(ref_template=_REF_PREFIX + "{model}")
    definitions = full.pop("$defs", {})
    allowed = ALLOWED_FIELDS[method]
    body = {**full, "properties": {k: v for k, v in full["properties"].items() if k in allowed},
            "additionalProperties": False,
            "description": f"vLLM's `{model.__name__}`, with only the fields fabriek offers "
                           "(any other is a 400 naming it)."}
    required = [r for r in (*full.get("required", ()), *_ALSO_REQUIRED.get(method, ())) if r in allowed]
    if required:
        body["required"] = list(dict.fromkeys(required))
    return body, {name: definitions[name] for name in _reachable(body, definitions)}


# One body per method that a tenant of one model may send as is (a short answer, 16 tokens):
# the docs page fills it in, and the API fuzz (loadtests/fuzz_http.py) sends it first.
EXAMPLES = {
    "chat": {"messages": [{"role": "user", "content": "What is the capital of the Netherlands?"}],
             "max_tokens": 16},
    "completions": {"prompt": "The capital of the Netherlands is", "max_tokens": 16},
    "embeddings": {"input": "query: Waar kan ik een paspoort aanvragen?"},
    "responses": {"input": "What is the capital of the Netherlands?", "max_output_tokens": 16},
}


def completion_route_docs(method: str) -> dict[str, Any]:
    """``add_api_route`` arguments that document a completion route: body, key and errors."""
    name = REQUEST_MODELS[method].__name__
    return {"openapi_extra": {
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": _REF_PREFIX + name},
                    "examples": {"short": {"summary": "A short answer (a tenant of several models adds `model`)",
                                           "value": EXAMPLES[method]}}}}},
                "security": [{SECURITY_SCHEME: []}]},
            "responses": {200: {"description": "The answer (JSON), or with `stream` its server-sent events",
                                "content": {"text/event-stream": {}}},
                          **_error_responses(*_COMPLETION_ERRORS)}}


def tenant_route_docs(*statuses: int) -> dict[str, Any]:
    """``add_api_route`` arguments of a route that needs only the key (``/v1/models``), and
    the error ``statuses`` it may answer besides 401."""
    return {"openapi_extra": {"security": [{SECURITY_SCHEME: []}]}, "responses": _error_responses(401, *statuses)}


def health_route_docs() -> dict[str, Any]:
    """``add_api_route`` arguments of ``/health``: a key is optional (with one, the tenant's pools)."""
    return {"openapi_extra": {"security": [{}, {SECURITY_SCHEME: []}]},
            "responses": {401: _error_responses(401)[401],
                          503: {"description": "Some engine of the domain is not ready"}}}


def install_openapi(app: FastAPI) -> None:
    """Add the request schemas and the bearer scheme to ``app``'s generated document, and
    generate it now: a mismatch fails the replica's start, not a client's request.

    Raises:
        ValueError: two schemas of one name differ (vLLM renamed or split a model).
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()  # FastAPI's own; it keeps it in app.openapi_schema
            components = document.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for name, schema in _request_components().items():
                if schemas.setdefault(name, schema) != schema:
                    raise ValueError(f"OpenAPI component {name!r} has two different schemas")
            components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = _BEARER
        return app.openapi_schema

    app.openapi = openapi
    app.openapi()


@cache
def _request_components() -> dict[str, dict]:
    """Every request body schema and what it refers to, by component name (built once per process)."""
    components: dict[str, dict] = {}
    for method, model in REQUEST_MODELS.items():
        body, definitions = restricted_schema(method)
        for name, schema in {model.__name__: body, **definitions}.items():
            if components.setdefault(name, schema) != schema:
                raise ValueError(f"OpenAPI component {name!r} has two different schemas")
    return components


def _error_responses(*statuses: int) -> dict[int, dict]:
    return {status: {"model": ErrorResponse, "description": _ERRORS[status]} for status in statuses}


def _reachable(schema: dict, definitions: Mapping[str, dict]) -> list[str]:
    """Names of the definitions ``schema`` refers to, directly or through others."""
    seen: list[str] = []
    pending = [schema]
    while pending:
        for name in _refs(pending.pop()):
            if name not in seen:
                seen.append(name)
                pending.append(definitions[name])
    return seen


def _refs(value: Any) -> list[str]:
    """Component names in every ``$ref`` within ``value``."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        found = [ref.removeprefix(_REF_PREFIX)] if isinstance(ref, str) and ref.startswith(_REF_PREFIX) else []
        return found + [name for item in value.values() for name in _refs(item)]
    if isinstance(value, list):
        return [name for item in value for name in _refs(item)]
    return []

"""The OpenAPI document of the HTTP API: request bodies restricted to the offered fields, the
bearer key, the error answers, under the domain's route prefix (no Ray, no engine)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.requests import Request

from routers.request_shape import ALLOWED_FIELDS, REFUSED_FIELDS
from serving.frontdoor.openapi_schema import (EXAMPLES, REQUEST_MODELS, SECURITY_SCHEME, completion_route_docs,
                                              health_route_docs, install_openapi, restricted_schema,
                                              tenant_route_docs)

ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


async def _unused(request: Request) -> dict:
    return {}


@pytest.fixture(scope="module")
def document() -> dict:
    """The document as a domain's front door serves it: routes documented as the ingress does."""
    app = FastAPI(title="fabriek")
    for method, path in ROUTES.items():
        app.add_api_route(path, _unused, methods=["POST"], **completion_route_docs(method))
    app.add_api_route("/v1/models", _unused, methods=["GET"], **tenant_route_docs())
    app.add_api_route("/health", _unused, methods=["GET"], **health_route_docs())
    install_openapi(app)
    response = TestClient(app, root_path="/government").get("/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize("method", sorted(ROUTES))
def test_the_body_offers_exactly_the_allowed_fields_vllm_defines(method):
    body, _ = restricted_schema(method)
    vllm_fields = set(REQUEST_MODELS[method].model_json_schema()["properties"])
    assert set(body["properties"]) == ALLOWED_FIELDS[method] & vllm_fields
    assert ALLOWED_FIELDS[method] <= vllm_fields  # the allowlist names no field vLLM lacks
    assert not set(body["properties"]) & (set(REFUSED_FIELDS) - ALLOWED_FIELDS[method])
    assert body["additionalProperties"] is False


def test_refused_fields_vllm_accepts_are_absent():
    chat, _ = restricted_schema("chat")
    completions, _ = restricted_schema("completions")
    for refused in ("cache_salt", "priority", "request_id", "kv_transfer_params", "vllm_xargs", "chat_template"):
        assert refused not in chat["properties"] and refused not in completions["properties"]
    assert "prompt_embeds" not in completions["properties"]
    assert chat["required"] == ["messages"] and completions["required"] == ["prompt"]


@pytest.mark.parametrize("method", sorted(ROUTES))
def test_each_route_takes_its_restricted_body_and_the_key(document, method):
    operation = document["paths"][ROUTES[method]]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.removeprefix("#/components/schemas/")
    assert name == REQUEST_MODELS[method].__name__
    assert document["components"]["schemas"][name] == restricted_schema(method)[0]
    assert operation["requestBody"]["required"] is True
    assert operation["security"] == [{SECURITY_SCHEME: []}]
    for status in ("400", "401", "404", "413", "429", "503", "504"):
        error = operation["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "422" not in operation["responses"]  # FastAPI never validates these bodies


def test_every_reference_resolves(document):
    schemas = document["components"]["schemas"]

    def refs(value):
        if isinstance(value, dict):
            if isinstance(value.get("$ref"), str):
                yield value["$ref"]
            for item in value.values():
                yield from refs(item)
        elif isinstance(value, list):
            for item in value:
                yield from refs(item)

    for ref in set(refs(document)):
        assert ref.startswith("#/components/schemas/") and ref.removeprefix("#/components/schemas/") in schemas
    assert "$defs" not in str(document)


def test_the_error_shape_is_openais(document):
    error = document["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    info = document["components"]["schemas"]["ErrorInfo"]
    assert {"message", "type", "param", "code"} <= set(info["properties"])


def test_bearer_scheme_and_optional_key_on_health(document):
    scheme = document["components"]["securitySchemes"][SECURITY_SCHEME]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["paths"]["/v1/models"]["get"]["security"] == [{SECURITY_SCHEME: []}]
    assert document["paths"]["/health"]["get"]["security"] == [{}, {SECURITY_SCHEME: []}]


def test_the_document_names_the_domains_prefix_as_its_server(document):
    # Ray Serve passes the route prefix as the ASGI root_path; clients resolve paths against it.
    assert document["servers"] == [{"url": "/government"}]


@pytest.mark.parametrize("method", sorted(ROUTES))
def test_the_documented_example_is_a_request_the_platform_accepts(document, method):
    from serving.frontdoor.openai_requests import validate_openai_request

    content = document["paths"][ROUTES[method]]["post"]["requestBody"]["content"]["application/json"]
    [example] = [e["value"] for e in content["examples"].values()]
    assert example == EXAMPLES[method]
    validate_openai_request(example, REQUEST_MODELS[method], method, 1)  # raises APIError if not
    assert set(example) <= set(restricted_schema(method)[0]["properties"])


def test_a_component_name_taken_twice_fails_at_build_time():
    class StreamOptions(BaseModel):  # vLLM's request schemas define another `StreamOptions`
        shadow: int

    app = FastAPI()
    app.add_api_route("/v1/chat/completions", _unused, methods=["POST"], **completion_route_docs("chat"))
    app.add_api_route("/clash", _unused, methods=["GET"], response_model=StreamOptions)
    with pytest.raises(ValueError, match="StreamOptions"):
        install_openapi(app)

"""BodySizeLimit: 413 for declared and chunked bodies over the limit, intact bodies below,
and nothing read before the app asks (the key is checked first)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.frontdoor.body_limit import BodySizeLimit, BodyTooLarge

LIMIT = 1024


async def echo_size(request: Request) -> JSONResponse:
    if request.headers.get("authorization") != "Bearer good":
        return JSONResponse({"error": "no key"}, status_code=401)  # answered unread
    try:
        return JSONResponse({"received": len(await request.body())})
    except BodyTooLarge:
        return JSONResponse({"error": "too large"}, status_code=413)


def client() -> TestClient:
    app = Starlette(routes=[Route("/", echo_size, methods=["POST"])])
    return TestClient(BodySizeLimit(app, max_bytes=LIMIT), headers={"authorization": "Bearer good"})


def chunks(total: int, size: int = 100):
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


def test_declared_length_over_limit_is_413_openai_shaped():
    response = client().post("/", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json()["error"] == {"message": f"request body exceeds the limit of {LIMIT} bytes",
                                         "type": "RequestTooLargeError", "param": None, "code": 413}


def test_body_at_the_limit_passes_intact():
    assert client().post("/", content=b"x" * LIMIT).json() == {"received": LIMIT}


def test_chunked_body_over_limit_is_413():
    assert client().post("/", content=chunks(LIMIT + 50)).status_code == 413


def test_chunked_body_under_limit_is_replayed_whole():
    assert client().post("/", content=chunks(LIMIT - 10)).json() == {"received": LIMIT - 10}


def test_unauthenticated_chunked_upload_is_answered_without_reading_it():
    pulled = []

    def counted_chunks():
        for chunk in chunks(LIMIT * 50):
            pulled.append(len(chunk))
            yield chunk

    response = client().post("/", content=counted_chunks(), headers={"authorization": "Bearer bad"})
    assert response.status_code == 401
    # The test client hands the app one chunk per receive(); none was asked for beyond the
    # first the transport may have buffered.
    assert sum(pulled) <= 100

"""ASGI middleware that bounds request bodies, without reading one before its key is checked."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.frontdoor.errors import error_response


class BodyTooLarge(Exception):
    """Raised while reading a body that grew past the limit (a chunked one, or one that lied
    about its length); the reader answers 413."""


class BodySizeLimit:
    """Answer 413 when a request body exceeds ``max_bytes``.

    A declared Content-Length over the limit is refused before anything is read. Every other
    body is counted as the app reads it, and reading past the limit raises ``BodyTooLarge``:
    nothing is buffered here, so the handlers check the API key before a single body byte is
    read, chunked or not, and an unauthenticated upload is answered 401 unread.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            await response(scope, receive, send)
            return
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, counted, send)

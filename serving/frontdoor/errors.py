"""OpenAI-shaped error responses: what every failure of the HTTP API looks like.

The body is vLLM's ``ErrorResponse`` (``{"error": {"message", "type", "param", "code"}}``),
which the official ``openai`` client turns into its typed exceptions by status code.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

from routers import RejectionReason
from serving.admission.refusals import STATUS_BY_REASON, Refused

# Error `type` names as OpenAI's API and client use them.
_TYPE_BY_STATUS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "TimeoutError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
    504: "TimeoutError",
}


# The request's id in the usage ledger (and the engine's logs), on answers and refusals.
REQUEST_ID_HEADER = "x-fabriek-request-id"



class APIError(Exception):
    """An error the API reports to the client with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 retry_after_s: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        self.headers = headers


def error_response(status: int, message: str, *, param: str | None = None,
                   retry_after_s: int | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped JSON error with the given HTTP status."""
    error_type = _TYPE_BY_STATUS.get(status) or (
        "InternalServerError" if status >= 500 else HTTPStatus(status).phrase.replace(" ", ""))
    body = ErrorResponse(error=ErrorInfo(message=message, type=error_type, param=param, code=status))
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def refusal_response(refused: Refused) -> JSONResponse:
    """The HTTP error of a refusal of the policy core: status by reason, ``Retry-After`` if any."""
    status = STATUS_BY_REASON[refused.rejection.reason]
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if refused.request_id is not None:
        headers[REQUEST_ID_HEADER] = refused.request_id
    param = "model" if status in (400, 404) else None
    if refused.rejection.reason is RejectionReason.REQUEST_TOO_LARGE:
        param = "max_tokens" if "max_tokens" in refused.rejection.message else "messages"
    return error_response(status, refused.rejection.message, param=param,
                          retry_after_s=refused.retry_after_s, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app raises, expected or not, OpenAI-shaped."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return error_response(err.status, err.message, param=err.param,
                              retry_after_s=err.retry_after_s, headers=err.headers)

    @app.exception_handler(Refused)
    async def _refused(_: Request, err: Refused) -> JSONResponse:
        return refusal_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), headers=err.headers)  # e.g. Allow on 405

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        return error_response(500, f"internal error ({type(err).__name__})")


"""gRPC status codes of the gRPC API: the policy core's refusals and the engine's errors.

The gRPC twin of the HTTP tables in ``serving.frontdoor.errors``: one table per source of errors,
keyed exactly as the HTTP ones, so the two APIs cannot drift apart.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from ray.serve.grpc_util import RayServegRPCContext

from routers import RejectionReason
from serving.admission.tenant_access import Refused

# As HTTP: a model the tenant may not use is NOT_FOUND, exactly like a model that does not
# exist (HTTP 404), so no tenant learns another's models.
CODE_BY_REASON = {
    RejectionReason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RejectionReason.MODEL_REQUIRED: grpc.StatusCode.INVALID_ARGUMENT,
    RejectionReason.WRONG_ENDPOINT: grpc.StatusCode.INVALID_ARGUMENT,
    RejectionReason.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    RejectionReason.NO_POOL: grpc.StatusCode.PERMISSION_DENIED,
    RejectionReason.POOL_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    RejectionReason.QUOTA_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RejectionReason.REQUEST_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectionReason.POOL_SATURATED: grpc.StatusCode.UNAVAILABLE,
    RejectionReason.POWER_CAPPED: grpc.StatusCode.UNAVAILABLE,
    RejectionReason.LEDGER_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    RejectionReason.TIMED_OUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Errors that carry an HTTP status: request validation (serving.frontdoor.openai_requests) and the
# engine's own refusals (vLLM's ErrorResponse, e.g. a prompt longer than the context).
CODE_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Trailing metadata: the retry delay for clients that do not read google.rpc.Status details.
RETRY_AFTER_KEY = "retry-after"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def code_for_http_status(status: int) -> grpc.StatusCode:
    """The gRPC code of an error that has an HTTP status; INTERNAL for unknown 5xx and others."""
    return CODE_BY_HTTP_STATUS.get(status, grpc.StatusCode.INTERNAL)


def set_error(grpc_context: RayServegRPCContext, code: grpc.StatusCode, message: str, *,
              retry_after_s: int | None = None, metadata: list[tuple[str, str]] | None = None) -> None:
    """Make the call fail with ``code``; a retry delay goes out as ``google.rpc.RetryInfo`` too.

    Args:
        metadata: further trailing metadata (e.g. the pool that refused it).
    """
    trailing = list(metadata or [])
    if retry_after_s is not None:
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s))
        details = any_pb2.Any()
        details.Pack(retry)
        status = status_pb2.Status(code=code.value[0], message=message, details=[details])
        trailing += [(RETRY_AFTER_KEY, str(retry_after_s)), (_STATUS_DETAILS_KEY, status.SerializeToString())]
    grpc_context.set_code(code)
    grpc_context.set_details(message)
    if trailing:
        grpc_context.set_trailing_metadata(trailing)


def set_refused(grpc_context: RayServegRPCContext, refused: Refused) -> None:
    """Make the call fail as the policy core's refusal says."""
    set_error(grpc_context, CODE_BY_REASON[refused.rejection.reason], refused.rejection.message,
              retry_after_s=refused.retry_after_s)

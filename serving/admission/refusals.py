"""The one vocabulary of refusals: why a request was refused, the status it ends with, and
when to retry. Both protocols read it (HTTP statuses are the ledger's status numbers too;
``serving.frontdoor.grpc_status`` maps the same reasons to gRPC codes).
"""

from __future__ import annotations

from routers import Rejection, RejectionReason

# A request that ended because the client went away (nginx's 499): no answer was sent.
CLIENT_CLOSED = 499

# How long a client should wait before retrying while its pool is not ready.
RETRY_AFTER_NOT_READY_S = 5
# Retry delays when the refusing step gave none; reasons not here are not worth retrying.
DEFAULT_RETRY_AFTER_S = {
    RejectionReason.POOL_UNAVAILABLE: RETRY_AFTER_NOT_READY_S,
    RejectionReason.QUOTA_EXCEEDED: RETRY_AFTER_NOT_READY_S,
    RejectionReason.POOL_SATURATED: 2,
    RejectionReason.POWER_CAPPED: 30,
    RejectionReason.LEDGER_UNAVAILABLE: RETRY_AFTER_NOT_READY_S,
}

# A model the tenant may not use is a 404, exactly like a model that does not exist: a
# tenant cannot tell another tenant's models from absent ones (the OpenAI API does the same).
# The gRPC API maps the same reasons in serving.frontdoor.grpc_status.
STATUS_BY_REASON = {
    RejectionReason.UNAUTHENTICATED: 401,
    RejectionReason.MODEL_REQUIRED: 400,
    RejectionReason.MODEL_NOT_FOUND: 404,
    RejectionReason.WRONG_ENDPOINT: 400,
    RejectionReason.NO_POOL: 403,
    RejectionReason.POOL_UNAVAILABLE: 503,
    RejectionReason.QUOTA_EXCEEDED: 429,
    # Caps: waiting would not help, and a 429 would make clients retry in vain.
    RejectionReason.REQUEST_TOO_LARGE: 400,
    RejectionReason.POOL_SATURATED: 503,
    # A grid operator's curtailment: the platform's choice, and passing (a cap has an end).
    RejectionReason.POWER_CAPPED: 503,
    # No durable usage record, no request: the platform's fault, and passing.
    RejectionReason.LEDGER_UNAVAILABLE: 503,
    RejectionReason.TIMED_OUT: 504,
}


class Refused(Exception):
    """A request the policy core (or an unavailable engine) refused, for the API to report.

    Args:
        rejection: the typed rejection: reason, refusing step, client-safe message.
    """

    def __init__(self, rejection: Rejection, request_id: str | None = None):
        super().__init__(rejection.message)
        self.rejection = rejection
        self.request_id = request_id  # set once the request has a usage record

    @property
    def retry_after_s(self) -> int | None:
        """Whole seconds the client should wait before retrying; None: do not retry as is."""
        delay = self.rejection.retry_after_s
        if delay is None:
            delay = DEFAULT_RETRY_AFTER_S.get(self.rejection.reason)
        return None if delay is None else max(1, round(delay))


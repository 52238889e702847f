"""The policy core (``routers``) wired to HTTP: keys from headers, rejections as status codes.

Authentication and admission are decided by ``routers``; this module only reads the
``Authorization`` header, asks the readiness tracker which routes are up, and turns
typed rejections into OpenAI-shaped HTTP errors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

from starlette.requests import Request

from routers import (Admission, AdmissionPipeline, AdmissionRequest, Authenticator, Candidate, KeyFile,
                     KeyFileWatcher, Rejection, RejectionReason, Route, Tenancy, Tenant,
                     load_or_create_secret)
from serving.errors import APIError

# How long a client should wait before retrying while its pool is not ready.
RETRY_AFTER_NOT_READY_S = 5

# A model the tenant may not use is a 404, exactly like a model that does not exist: a
# tenant cannot tell another tenant's models from absent ones (the OpenAI API does the same).
STATUS_BY_REASON = {
    RejectionReason.UNAUTHENTICATED: 401,
    RejectionReason.MODEL_REQUIRED: 400,
    RejectionReason.MODEL_NOT_FOUND: 404,
    RejectionReason.NO_POOL: 403,
    RejectionReason.POOL_UNAVAILABLE: 503,
    # Caps: waiting would not help, and a 429 would make clients retry in vain.
    RejectionReason.REQUEST_TOO_LARGE: 400,
    RejectionReason.QUOTA_EXCEEDED: 429,
    RejectionReason.POOL_SATURATED: 503,
}


class TenantAccess:
    """Who is calling, and which route serves their request.

    Args:
        tenancy: tenants and class policies from the platform config.
        routes: every engine deployment, in config order.
        key_file: the API key file (it need not exist yet: then every key is refused).
        cache_salt_secret_file: the salt secret; created if absent.
        key_reload_interval_s: least time between two looks at the key file.
    """

    def __init__(self, tenancy: Tenancy, routes: Iterable[Route], *, key_file: Path,
                 cache_salt_secret_file: Path, key_reload_interval_s: float):
        self._routes = tuple(routes)
        self._authenticator = Authenticator(
            KeyFileWatcher(KeyFile(key_file), check_interval_s=key_reload_interval_s), tenancy)
        self._pipeline = AdmissionPipeline(tenancy, load_or_create_secret(cache_salt_secret_file))

    def authenticate(self, request: Request) -> Tenant:
        """The tenant of the request's bearer key.

        Raises:
            APIError: 401 for a missing, malformed, unknown or revoked key.
        """
        decision = self._authenticator.authenticate(request.headers.get("authorization"))
        if isinstance(decision, Rejection):
            raise as_api_error(decision)
        return decision

    def admit(self, tenant: Tenant, model_id: str | None, is_ready: Callable[[Route], bool]) -> Admission:
        """Admit the tenant's request for ``model_id`` to one ready route of its pools.

        Raises:
            APIError: 400 no model named (and several allowed), 404 model not allowed or
                unknown, 403 no pool of the class serves it, 503 its pools are not ready.
        """
        model = self._pipeline.resolve_model(tenant, model_id)
        if isinstance(model, Rejection):
            raise as_api_error(model)
        candidates = [Candidate(r, is_ready(r)) for r in self._routes]
        decision = self._pipeline.admit(AdmissionRequest(tenant, model), candidates)
        if isinstance(decision, Rejection):
            raise as_api_error(decision)
        return decision


def as_api_error(rejection: Rejection) -> APIError:
    """The HTTP error of a refusal of the policy core."""
    status = STATUS_BY_REASON[rejection.reason]
    if status == 401:
        return APIError(401, rejection.message, headers={"WWW-Authenticate": "Bearer"})
    if rejection.retry_after_s is not None or status == 503:
        retry_s = rejection.retry_after_s or RETRY_AFTER_NOT_READY_S
        return APIError(status, rejection.message, retry_after_s=math.ceil(retry_s))
    if rejection.reason is RejectionReason.REQUEST_TOO_LARGE:
        return APIError(status, rejection.message, param="max_tokens" if "max_tokens" in rejection.message
                        else "messages")
    return APIError(status, rejection.message, param="model" if status in (400, 404) else None)

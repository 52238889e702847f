"""The policy core (``routers``) wired to the APIs: who is calling, and which route serves them.

Authentication and admission are decided by ``routers``; this module only takes the
``authorization`` value (an HTTP header or gRPC metadata), asks the readiness tracker which
routes are up, and raises refusals as ``Refused`` (``serving.admission.refusals``, which
also gives each reason its status; gRPC codes are in ``serving.frontdoor.grpc_status``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Callable, Iterable

from routers import (Admission, AdmissionPipeline, AdmissionRequest, Authenticator, Candidate, KeyFile,
                     KeyFileWatcher, Rejection, Route, Tenancy, Tenant,
                     load_or_create_secret)
from routers.authentication import PendingCheck
from serving.admission.refusals import Refused


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
        # One thread hashes keys (scrypt) off the event loop: a first or a wrong key never
        # stalls the streams in flight, and guessing takes at most this one core.
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fabriek-key-hash")

    async def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of a bearer key; a key's first check hashes it in a worker thread.

        Args:
            authorization: the ``Authorization`` header or ``authorization`` metadata value.

        Raises:
            Refused: UNAUTHENTICATED for a missing, malformed, unknown or revoked key, or a
                key id whose wrong secrets passed the limit (``routers.authentication``).
        """
        decision = self._authenticator.start(authorization)
        if isinstance(decision, PendingCheck):
            verified = await asyncio.get_running_loop().run_in_executor(self._hasher, decision.verify)
            decision = self._authenticator.finish(decision, verified)
        if isinstance(decision, Rejection):
            raise Refused(decision)
        return decision

    def admit(self, tenant: Tenant, model_id: str | None, is_ready: Callable[[Route], bool],
              endpoint_models: frozenset[str] | None = None) -> Admission:
        """Admit the tenant's request for ``model_id`` to one ready route of its pools.

        ``endpoint_models``: the models of the endpoint's kind (``AdmissionPipeline.resolve_model``).

        Raises:
            Refused: MODEL_REQUIRED (no model named, several allowed), MODEL_NOT_FOUND (not
                allowed or unknown), NO_POOL (no pool of the class serves it),
                POOL_UNAVAILABLE (its pools are not ready).
        """
        model = self._pipeline.resolve_model(tenant, model_id, endpoint_models)
        if isinstance(model, Rejection):
            raise Refused(model)
        candidates = [Candidate(r, is_ready(r)) for r in self._routes]
        decision = self._pipeline.admit(AdmissionRequest(tenant, model), candidates)
        if isinstance(decision, Rejection):
            raise Refused(decision)
        return decision

"""The one admission path of both APIs: authenticate, admit, set the tenant's fields, call the engine.

The HTTP ingress and the gRPC service differ only in how they read a request and write
an answer; everything that decides who may call what, and where it runs, happens here,
through the policy core (``routers``) behind ``TenantAccess``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from routers import Admission, Rejection, RejectionReason, Route, Tenancy, Tenant
from serving.llm_server import Stamped
from serving.readiness import EngineReadiness
from serving.tenant_access import Refused, TenantAccess

logger = logging.getLogger("fabriek.gateway")

OpenAIRequest = ChatCompletionRequest | CompletionRequest
# Engine methods of FabriekLLMServer that answer OpenAI requests.
ENGINE_METHODS = ("chat", "completions")


@dataclass
class EngineAnswer:
    """The start of an engine's answer, and the rest of it still to come.

    Args:
        route: the pool and model that serve the request.
        replica: ``<deployment>#<replica id>`` of the engine replica that answered, if it said.
        first: the first item: a complete response (unstreamed), or a batch of SSE events.
        rest: the engine stream; cancel it when the client goes away.
        error: the engine refused the request (e.g. a prompt longer than the context).
    """

    route: Route
    replica: str | None
    first: Any
    rest: DeploymentResponseGenerator
    error: ErrorResponse | None = None


class Gateway:
    """Tenants, readiness and engine handles, shared by the HTTP and gRPC front doors.

    Args:
        engines: route (pool and model) -> engine deployment, in config order.
        tenancy / key_file / cache_salt_secret_file / key_reload_interval_s: see ``TenantAccess``.
    """

    def __init__(self, engines: Mapping[Route, DeploymentHandle], *, tenancy: Tenancy, key_file: Path,
                 cache_salt_secret_file: Path, key_reload_interval_s: float):
        # Streaming handles per (route, method), configured once: Ray builds a new handle
        # on every attribute access (`handle.chat` is `handle.options(method_name=...)`).
        self._streaming = {(r, method): getattr(h.options(stream=True), method)
                           for r, h in engines.items() for method in ENGINE_METHODS}
        self.readiness = EngineReadiness(engines)
        self._access = TenantAccess(tenancy, engines, key_file=key_file,
                                    cache_salt_secret_file=cache_salt_secret_file,
                                    key_reload_interval_s=key_reload_interval_s)

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of ``Bearer KEY``.

        Raises:
            Refused: UNAUTHENTICATED.
        """
        return self._access.authenticate(authorization)

    def admit_without_engine(self, tenant: Tenant, model_id: str | None) -> Admission:
        """Admit a request that needs no engine (token counting): pools and models, not readiness.

        Raises:
            Refused: as ``TenantAccess.admit``, except POOL_UNAVAILABLE.
        """
        return self._access.admit(tenant, model_id, lambda route: True)

    async def call(self, tenant: Tenant, body: OpenAIRequest, method: str) -> EngineAnswer:
        """Admit ``body`` for ``tenant``, send it to an engine of its pool, wait for the first item.

        Args:
            method: ``chat`` or ``completions``.

        Raises:
            Refused: the policy refused the request, or its engine is unavailable.
        """
        admission = self._access.admit(tenant, body.model, self.readiness.is_ready)
        apply_tenant_fields(body, admission)
        route = admission.route
        stream: DeploymentResponseGenerator = self._streaming[(route, method)].remote(body)
        try:
            first = await stream.__anext__()
        except (RayActorError, DeploymentUnavailableError, BackPressureError) as err:
            logger.warning("engine %s/%s unavailable: %s", route.pool, route.model_id, type(err).__name__)
            raise Refused(Rejection(RejectionReason.POOL_UNAVAILABLE, "engine",
                                    f"The model `{route.model_id}` is unavailable; retry shortly.")) from None
        except StopAsyncIteration:
            raise RuntimeError("the engine returned no response") from None
        except BaseException:
            # The client went away (cancellation) or the call failed: stop the engine too.
            stream.cancel()
            raise
        replica = None
        if isinstance(first, Stamped):
            replica = f"{first.deployment}#{first.replica_id}"
            first = first.item
        if isinstance(first, list) and first and isinstance(first[0], ErrorResponse):
            first = first[0]  # a streamed request the engine refused before its first token
        error = first if isinstance(first, ErrorResponse) else None
        return EngineAnswer(route, replica, first, stream, error)


def apply_tenant_fields(body: OpenAIRequest, admission: Admission) -> None:
    """Overwrite what the engine must know of the tenant; whatever the client sent is ignored.

    ``cache_salt`` keeps the tenant's prefix-cache entries to itself, ``priority`` is its
    class's band, ``user`` names the tenant (for the engine's own accounting).
    """
    body.model = admission.route.model_id
    body.cache_salt = admission.cache_salt
    body.priority = admission.priority
    body.user = admission.tenant.id

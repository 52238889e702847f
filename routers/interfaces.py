"""Contracts of the admission pipeline: what flows through it and what its plugins implement.

A request is admitted by narrowing a list of candidate routes (engine deployments, one per
pool and model) with filters; the first filter that leaves nothing refuses the request and
is named in the typed ``Rejection``. Callers map rejections to their protocol (HTTP status
codes and gRPC status codes in ``serving``), so nothing here speaks HTTP or gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, Sequence

from routers.tenants import Tenant


@dataclass(frozen=True)
class Route:
    """An engine deployment that can serve requests: one model on one pool."""

    pool: str
    model_id: str


@dataclass(frozen=True)
class Candidate:
    """A route and whether its engine answered its last readiness probe."""

    route: Route
    is_ready: bool


@dataclass(frozen=True)
class AdmissionRequest:
    """Per-request input of the pipeline: an authenticated tenant and the model it asks for.

    ``model_id`` is the model whose engines serve the request: an adapter's base model when
    the tenant asked for one of its adapters (``adapter``).
    """

    tenant: Tenant
    model_id: str
    adapter: str | None = None


class RejectionReason(StrEnum):
    """Why a request was refused; each maps to one status code of the caller's protocol."""

    UNAUTHENTICATED = "unauthenticated"     # no key, or an unknown or revoked one
    MODEL_REQUIRED = "model_required"       # no model named and the tenant has several
    MODEL_NOT_FOUND = "model_not_found"     # the tenant may not use the model (or it does not exist)
    WRONG_ENDPOINT = "wrong_endpoint"       # a model of the tenant's, sent to an endpoint of another kind
    NO_POOL = "no_pool"                     # the tenant's class may use no pool serving the model
    POOL_UNAVAILABLE = "pool_unavailable"   # the tenant's pools serve it, but none is ready
    REQUEST_TOO_LARGE = "request_too_large"  # prompt or max_tokens over the tenant's caps
    QUOTA_EXCEEDED = "quota_exceeded"       # requests, tokens or concurrency over the tenant's quota
    POOL_SATURATED = "pool_saturated"       # the pool is full and its queue too (or the wait ran out)
    POWER_CAPPED = "power_cap"              # as POOL_SATURATED, while a power cap holds the pool's limit down
    # Not a filter's: the ingress could not write the request's usage record in time.
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    TIMED_OUT = "timed_out"                 # no answer within the class's time limit (a stuck engine)


@dataclass(frozen=True)
class Rejection:
    """A refused request: why, which step refused it, and a message safe to show the client.

    ``retry_after_s`` is set when waiting helps (quota refills, queue drains): protocols
    pass it on (HTTP ``Retry-After``, a gRPC retry delay).
    """

    reason: RejectionReason
    refused_by: str
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Admission:
    """An admitted request: where it goes and what the engine must be told about its tenant.

    Args:
        tenant: the authenticated tenant.
        route: the engine deployment that serves it.
        priority: vLLM request priority (lower is scheduled first).
        cache_salt: vLLM prefix-cache salt, the same for all requests of the tenant only.
        adapter: the tenant's LoRA adapter the request runs with, on the route's base model.
    """

    tenant: Tenant
    route: Route
    priority: int
    cache_salt: str
    adapter: str | None = None

    @property
    def served_model(self) -> str:
        """What the engine is asked for: the adapter (vLLM's LoRA name), else the route's model."""
        return self.adapter or self.route.model_id


class Filter(Protocol):
    """One admission step: keeps the candidates the request may use."""

    name: str
    reason: RejectionReason  # reported when this filter leaves no candidate

    def filter(self, request: AdmissionRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The subset of ``candidates`` (in their order) this filter lets through."""
        ...

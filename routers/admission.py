"""The admission pipeline: from an authenticated tenant and a model to one engine route."""

from __future__ import annotations

from typing import Sequence

from routers.cache_salt import cache_salt_for
from routers.filters import ModelAccessFilter, PoolClassFilter, ReadinessFilter
from routers.interfaces import (Admission, AdmissionRequest, Candidate, Filter, Rejection,
                                RejectionReason)
from routers.tenants import Tenancy, Tenant

_MESSAGES = {
    RejectionReason.NO_POOL: "No pool of your tenant class serves the model `{model}`.",
    RejectionReason.MODEL_NOT_FOUND: "The model `{model}` does not exist.",
    RejectionReason.POOL_UNAVAILABLE: "The model `{model}` is not ready on your pool; retry shortly.",
}


class AdmissionPipeline:
    """Runs the filters over the candidate routes and picks one route, or refuses.

    Args:
        tenancy: tenants and class policies from the platform config.
        cache_salt_secret: secret from which each tenant's prefix-cache salt is derived.
        filters: the steps, in order; by default pool class, model access, readiness.
            Pool class runs first so that no later step can ever widen a request's pools.
    """

    def __init__(self, tenancy: Tenancy, cache_salt_secret: bytes,
                 filters: Sequence[Filter] | None = None):
        self._tenancy = tenancy
        self._secret = cache_salt_secret
        self._filters: tuple[Filter, ...] = tuple(filters) if filters is not None else (
            PoolClassFilter(tenancy), ModelAccessFilter(), ReadinessFilter())
        # One HMAC per tenant, computed once: the salt of a tenant never changes.
        self._salts = {t: cache_salt_for(cache_salt_secret, t) for t in tenancy.tenants}

    def resolve_model(self, tenant: Tenant, model_id: str | None,
                      endpoint_models: frozenset[str] | None = None) -> str | Rejection:
        """The requested model, or the tenant's only model when the request names none.

        Args:
            endpoint_models: the models of the endpoint's kind (chat and completion models,
                or embedding models); None: any. A request naming none gets the tenant's only
                model of that kind; one naming a model of the tenant's of the other kind is
                told so (a model the tenant may not use stays a 404, by the filters).
        """
        mine = tenant.model_ids if endpoint_models is None else tenant.model_ids & endpoint_models
        if model_id is not None:
            model = tenant.base_of(model_id) or model_id  # an adapter answers as its base model
            if model in tenant.model_ids and model not in mine:
                return Rejection(RejectionReason.WRONG_ENDPOINT, "model",
                                 f"The model `{model_id}` does not answer this endpoint: embedding models "
                                 "answer `/v1/embeddings`, the others chat and completions.")
            return model_id
        if len(mine) == 1:
            return next(iter(mine))
        return Rejection(RejectionReason.MODEL_REQUIRED, "model",
                         f"`model` is required: you may use {sorted(mine or tenant.model_ids)}")

    def admit(self, request: AdmissionRequest, candidates: Sequence[Candidate]) -> Admission | Rejection:
        """Narrow ``candidates`` filter by filter and pick the first survivor.

        Returns:
            The admission, or a rejection naming the filter that left no candidate.
        """
        base = request.tenant.base_of(request.model_id)
        if base is not None:  # the tenant's own adapter: its base model's engines serve it
            request = AdmissionRequest(request.tenant, base, adapter=request.model_id)
        remaining = list(candidates)
        for step in self._filters:
            remaining = step.filter(request, remaining)
            if not remaining:
                return Rejection(step.reason, step.name,
                                 _MESSAGES[step.reason].format(model=request.adapter or request.model_id))
        # Candidates come in config order and every survivor is equally entitled; Ray Serve
        # balances load across the replicas of the chosen deployment.
        chosen = remaining[0]
        tenant = request.tenant
        salt = self._salts.get(tenant.id) or cache_salt_for(self._secret, tenant.id)
        return Admission(tenant=tenant, route=chosen.route,
                         priority=self._tenancy.priority_for(tenant), cache_salt=salt, adapter=request.adapter)

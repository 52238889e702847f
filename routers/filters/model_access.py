"""Model access: a tenant reaches only the models the config grants it."""

from __future__ import annotations

from typing import Sequence

from routers.interfaces import AdmissionRequest, Candidate, RejectionReason


class ModelAccessFilter:
    """Keeps the candidates serving the requested model, if the tenant may use that model.

    A model the tenant may not use is refused exactly like one that does not exist, so a
    tenant cannot learn which models other tenants have.
    """

    name = "model_access"
    reason = RejectionReason.MODEL_NOT_FOUND

    def filter(self, request: AdmissionRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Candidates of the requested model; none when the tenant may not use it."""
        if request.model_id not in request.tenant.model_ids:
            return []
        return [c for c in candidates if c.route.model_id == request.model_id]

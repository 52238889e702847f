"""Strict class-to-pool routing: a request only ever reaches pools its tenant's class may use."""

from __future__ import annotations

from typing import Sequence

from routers.interfaces import AdmissionRequest, Candidate, RejectionReason
from routers.tenants import Tenancy


class PoolClassFilter:
    """Keeps the candidates on pools of the tenant's class; a class without pools keeps none."""

    name = "pool_class"
    reason = RejectionReason.NO_POOL

    def __init__(self, tenancy: Tenancy):
        self._tenancy = tenancy

    def filter(self, request: AdmissionRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Candidates whose pool the tenant's class may use."""
        pools = self._tenancy.pools_for(request.tenant)
        return [c for c in candidates if c.route.pool in pools]

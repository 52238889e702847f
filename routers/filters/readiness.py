"""Readiness: a request waits for no engine that is loading or has died."""

from __future__ import annotations

from typing import Sequence

from routers.interfaces import AdmissionRequest, Candidate, RejectionReason


class ReadinessFilter:
    """Keeps the candidates whose engine is ready.

    It runs after the pool filter, so when a tenant's own pools are down the request is
    refused (fails closed) rather than sent to another pool's ready replicas.
    """

    name = "readiness"
    reason = RejectionReason.POOL_UNAVAILABLE

    def filter(self, request: AdmissionRequest, candidates: Sequence[Candidate]) -> list[Candidate]:  # noqa: ARG002
        """Candidates whose engine answered its last probe."""
        return [c for c in candidates if c.is_ready]

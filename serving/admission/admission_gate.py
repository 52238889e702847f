"""The ingress side of admission: quota and queue lease, usage record and metrics per request.

Every request that names a tenant passes through here once, whatever its protocol: it is
admitted (a lease from the shared ``AdmissionController``, a started ledger record) or
refused, and when it ends its record is completed, its lease released with the tokens
it used, and its metrics counted. The started record is committed before the engine
sees the request, so a killed ingress leaves a trace of every request it accepted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Any

from routers import Admission, Rejection, RejectionReason, Tenant
from serving.admission.admission_controller import Lease
from serving.admission.refusals import CLIENT_CLOSED, STATUS_BY_REASON
from serving.records.ledger import (CANCELLED, ERROR, OK, REJECTED, LedgerUnavailable, RequestEnd,
                                    RequestStart)
from serving.records.ledger_writer import LedgerWriter
from serving.records.metrics import PlatformMetrics
from serving.records.request_timings import Timings
from serving.records.tracing import current_trace_id

logger = logging.getLogger("fabriek.admission")

# The longest a request waits for its started record. Above twice SQLite's busy timeout
# (serving.records.ledger.SQLITE_BUSY_TIMEOUT_S): a write that arrives while the writer
# waits for a lock waits for that attempt, then its own; past this the database is stuck.
LEDGER_WAIT_S = 5.0


@dataclass
class Visit:
    """One admitted request on its way through the ingress."""

    request_id: str
    labels: dict[str, str]
    admitted_at: float
    queue_s: float
    first_token_at: float | None = None
    is_done: bool = False
    reason: str | None = None  # the ledger's note on an admitted request (queued for power)


class AdmissionGate:
    """Admits, records and accounts requests for one ingress replica.

    Args:
        controller: handle of the application's ``AdmissionController`` deployment.
        ledger: the usage ledger's writer (group commit, its own thread).
        metrics: the platform metrics.
    """

    def __init__(self, controller: Any, ledger: LedgerWriter, metrics: PlatformMetrics):
        self._controller = controller
        self._ledger = ledger
        self._metrics = metrics

    async def enter(self, admission: Admission, request_id: str, prompt_tokens: int,
                    max_tokens: int, protocol: str, sequences: int = 1) -> Visit | Rejection:
        """Acquire a lease for an admitted route and write the started record, together.

        Args:
            max_tokens: the most tokens the request may generate, all sequences together.
            sequences: sequences it runs at once (each takes a slot of quota and pool).
        """
        route, tenant = admission.route, admission.tenant
        # The ledger names the adapter a request ran with; metrics keep the base model's label.
        start = RequestStart(request_id, tenant.id, str(tenant.tenant_class), route.pool,
                             admission.served_model, protocol, reserved_tokens=prompt_tokens + max_tokens,
                             trace_id=current_trace_id())
        started = time.monotonic()
        decision, written = await asyncio.gather(
            self._controller.acquire.remote(request_id, tenant.id, admission.priority, route,
                                            prompt_tokens, max_tokens, sequences),
            asyncio.wait_for(asyncio.wrap_future(self._ledger.start(start)), LEDGER_WAIT_S),
            return_exceptions=True)
        labels = {"pool": route.pool, "tenant_class": str(tenant.tenant_class), "model": route.model_id}
        if isinstance(written, BaseException):
            # No durable record, no request: give the lease back and refuse (503, retry).
            if isinstance(decision, Lease):
                self._controller.release.remote(request_id, 0)
            decision = Rejection(RejectionReason.LEDGER_UNAVAILABLE, "ledger",
                                 "The usage ledger is unavailable; retry shortly.")
            if isinstance(written, TimeoutError):
                # The record may still be written (the writer takes it later): the refusal
                # below completes it, in the writer's order.
                self._ledger.note_timeout(LEDGER_WAIT_S)
            else:
                if not isinstance(written, LedgerUnavailable):  # the writer logs those, once an outage
                    logger.error("usage ledger: started record of %s failed: %s", request_id,
                                 type(written).__name__)
                # Nothing was written, so nothing to complete.
                self._metrics.observe_rejection(labels, str(decision.reason), status_of(decision))
                return decision
        if isinstance(decision, BaseException):
            # The controller is down or restarting: fail closed.
            logger.warning("admission controller unavailable: %r", decision)
            decision = Rejection(RejectionReason.POOL_UNAVAILABLE, "admission_controller",
                                 "Admission is unavailable; retry shortly.", retry_after_s=5)
        if isinstance(decision, Rejection):
            status = status_of(decision)
            self._metrics.observe_rejection(labels, str(decision.reason), status)
            _logged(self._ledger.finish(request_id, RequestEnd(
                REJECTED, status, reason=str(decision.reason),
                latency_ms=(time.monotonic() - started) * 1e3)))
            return decision
        assert isinstance(decision, Lease)
        return Visit(request_id, labels, time.monotonic(), decision.queue_s, reason=decision.reason)

    def refuse(self, tenant: Tenant, model_id: str | None, request_id: str, rejection: Rejection,
               protocol: str, *, model_label: str) -> None:
        """Records a request refused before it reached a pool (unknown model, pool down).

        Args:
            model_id: the model as the client named it (bounded in length by the front door).
            model_label: its metric label: the id if the domain serves it, else one fixed value.
        """
        labels = {"pool": "", "tenant_class": str(tenant.tenant_class), "model": model_label}
        status = status_of(rejection)
        self._metrics.observe_rejection(labels, str(rejection.reason), status)
        _logged(self._ledger.record(RequestStart(
            request_id, tenant.id, str(tenant.tenant_class), None, model_id, protocol,
            trace_id=current_trace_id()),
            RequestEnd(REJECTED, status, reason=str(rejection.reason))))

    def close(self) -> None:
        """Commits the records still waiting (the replica is stopping)."""
        self._ledger.close()

    @staticmethod
    def first_token(visit: Visit) -> None:
        if visit.first_token_at is None:
            visit.first_token_at = time.monotonic()

    def leave(self, visit: Visit, status: int, prompt_tokens: int = 0,
              completion_tokens: int = 0, *, energy_j: float | None = None) -> Timings | None:
        """Ends a visit once: releases the lease, completes the record, counts the metrics.

        Args:
            energy_j: the joules its engine's meter gave it (None: not measured).

        Returns:
            the request's timings, or None when the visit had already ended.
        """
        if visit.is_done:
            return None
        visit.is_done = True
        now = time.monotonic()
        # Fire and forget: the answer does not wait for the bookkeeping.
        self._controller.release.remote(visit.request_id, prompt_tokens + completion_tokens)
        # From the client's view, queueing included.
        ttft_s = visit.first_token_at - visit.admitted_at + visit.queue_s if visit.first_token_at else None
        latency_s = now - visit.admitted_at + visit.queue_s
        outcome = OK if status < 400 else CANCELLED if status == CLIENT_CLOSED else ERROR
        _logged(self._ledger.finish(visit.request_id, RequestEnd(
            outcome, status, prompt_tokens, completion_tokens, queue_ms=visit.queue_s * 1e3,
            ttft_ms=None if ttft_s is None else ttft_s * 1e3, latency_ms=latency_s * 1e3,
            reason=visit.reason, energy_j=energy_j)))
        timings = Timings(visit.queue_s, ttft_s, latency_s)
        self._metrics.observe_finished(visit.labels, status, prompt_tokens=prompt_tokens,
                                       completion_tokens=completion_tokens, timings=timings, energy_j=energy_j)
        return timings


def _logged(written: concurrent.futures.Future) -> None:
    """A write nobody waits for (the answer does not wait for the bookkeeping): its failure
    is logged."""
    written.add_done_callback(_log_failure)


def _log_failure(written: concurrent.futures.Future) -> None:
    if written.exception() is not None:
        logger.error("usage ledger write failed: %r", written.exception())


def status_of(rejection: Rejection) -> int:
    """The HTTP-style status of an admission refusal, for the ledger and metrics (the gRPC
    API answers with its own codes, mapped from the same reasons)."""
    return STATUS_BY_REASON[rejection.reason]

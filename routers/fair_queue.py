"""Admission to one pool: bounded running and waiting, weighted-fair between tenants.

Three orders are kept apart:
- priority band: the tenant class's priority; a lower band is always served first;
- fairness between tenants of a band: the waiting tenant with the fewest running requests
  per unit of weight goes next, so no tenant holds more than its share while others wait;
- order within a tenant: first come, first served.

The queue is bounded twice: in total (``max_queued``) and per tenant (its weighted share of
the slots, so a flood of one tenant cannot fill the queue for everyone). What does not fit
is shed at once, with a retry hint; the caller cancels what waited ``max_queue_wait_s``.
Pure and synchronous: the caller owns the clock and the waiting (futures, timers).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

from routers.interfaces import Rejection, RejectionReason


@dataclass(frozen=True)
class Ticket:
    """One request asking to run on the pool.

    Args:
        id: unique request id.
        tenant_id: who asks.
        band: priority band (the class priority; lower is served first).
        enqueued_at: clock reading when it arrived (for the wait limit).
        size: sequences it runs in the engine's batch (``n``, prompt lists); each takes a slot.
    """

    id: str
    tenant_id: str
    band: int
    enqueued_at: float
    size: int = 1


class Offer(Enum):
    """Where an offered ticket went (a refusal is a ``Rejection``)."""

    ADMITTED = "admitted"
    QUEUED = "queued"


@dataclass(frozen=True)
class PoolLimits:
    """How much one pool takes.

    Args:
        max_running: requests admitted to the pool's engines at once (its capacity).
        max_queued: requests waiting for a slot, all tenants together.
        max_queue_wait_s: the longest a request waits before it is shed.
        retry_after_s: the hint given to shed requests.
    """

    max_running: int
    max_queued: int
    max_queue_wait_s: float
    retry_after_s: float = 2.0


@dataclass
class FairQueue:
    """The admission state of one pool.

    Args:
        limits: the pool's capacity and queue bounds.
        weights: tenant id -> fairness weight, for every tenant that may use the pool;
            an unknown tenant counts with weight 1.
    """

    limits: PoolLimits
    weights: Mapping[str, float]
    # Counters kept beside the queues: offer and dispatch run once per request.
    _running: dict[str, int] = field(default_factory=dict)
    _waiting: dict[int, dict[str, deque[Ticket]]] = field(default_factory=dict)
    _waiting_by_tenant: dict[str, int] = field(default_factory=dict)
    num_running: int = 0
    num_waiting: int = 0

    def __post_init__(self) -> None:
        self._total_weight = sum(self.weights.values()) or 1.0

    def running_of(self, tenant_id: str) -> int:
        return self._running.get(tenant_id, 0)

    def waiting_of(self, tenant_id: str) -> int:
        return self._waiting_by_tenant.get(tenant_id, 0)

    def queue_share(self, tenant_id: str) -> int:
        """Waiting slots the tenant may hold: its weighted share of ``max_queued`` (at least 1)."""
        weight = self.weights.get(tenant_id, 1.0)
        return max(1, math.floor(self.limits.max_queued * weight / max(self._total_weight, weight)))

    def offer(self, ticket: Ticket) -> Offer | Rejection:
        """Runs the ticket now, queues it, or sheds it. Newcomers never overtake waiters.

        The caller bounds the wait: it ``cancel``s a ticket that waited too long."""
        # Invariant: tickets wait only while the pool is full (every release dispatches).
        if self.num_waiting == 0 and self._fits(ticket):
            self._start(ticket.tenant_id, ticket.size)
            return Offer.ADMITTED
        if self.num_waiting >= self.limits.max_queued or \
                self.waiting_of(ticket.tenant_id) >= self.queue_share(ticket.tenant_id):
            return Rejection(RejectionReason.POOL_SATURATED, "fair_queue",
                             "The pool is at capacity; retry shortly.",
                             retry_after_s=self.limits.retry_after_s)
        self._waiting.setdefault(ticket.band, {}).setdefault(ticket.tenant_id, deque()).append(ticket)
        self._count_waiting(ticket.tenant_id, +1)
        return Offer.QUEUED

    def release(self, tenant_id: str, size: int = 1) -> list[Ticket]:
        """A running request of the tenant (of ``size`` slots) ended: returns the tickets that now run."""
        freed = min(size, self._running.get(tenant_id, 0))
        self._running[tenant_id] = self._running.get(tenant_id, 0) - freed
        self.num_running -= freed
        return self._dispatch()

    def set_max_running(self, max_running: int) -> list[Ticket]:
        """Change the running limit (a power cap): returns the tickets that now run.

        Requests already running above a lowered limit finish; new ones wait until the
        pool is under it again.
        """
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1, not {max_running}")
        self.limits = dataclasses.replace(self.limits, max_running=max_running)
        return self._dispatch()

    def cancel(self, ticket: Ticket) -> bool:
        """Drops a waiting ticket (its client left, or it timed out); False if not waiting."""
        queue = self._waiting.get(ticket.band, {}).get(ticket.tenant_id)
        if not queue or ticket not in queue:
            return False
        queue.remove(ticket)
        self._count_waiting(ticket.tenant_id, -1)
        return True

    def _fits(self, ticket: Ticket) -> bool:
        # A request larger than the whole pool runs alone rather than never.
        return self.num_running == 0 or self.num_running + ticket.size <= self.limits.max_running

    def _start(self, tenant_id: str, size: int) -> None:
        self._running[tenant_id] = self._running.get(tenant_id, 0) + size
        self.num_running += size

    def _count_waiting(self, tenant_id: str, delta: int) -> None:
        self._waiting_by_tenant[tenant_id] = self._waiting_by_tenant.get(tenant_id, 0) + delta
        self.num_waiting += delta

    def _dispatch(self) -> list[Ticket]:
        admitted = []
        while self.num_running < self.limits.max_running and self.num_waiting:
            band = min(b for b, tenants in self._waiting.items() if any(tenants.values()))
            tenants = self._waiting[band]
            # Fewest running per unit of weight first; the earliest waiter breaks ties.
            tenant_id = min((t for t, q in tenants.items() if q),
                            key=lambda t: (self._running.get(t, 0) / self.weights.get(t, 1.0),
                                           tenants[t][0].enqueued_at))
            if not self._fits(tenants[tenant_id][0]):
                break  # the next in fair order waits for room; nobody overtakes it
            ticket = tenants[tenant_id].popleft()
            self._count_waiting(tenant_id, -1)
            self._start(tenant_id, ticket.size)
            admitted.append(ticket)
        return admitted

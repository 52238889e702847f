"""Admission to one pool: bounded running and waiting, weighted-fair between tenants.

Three orders are kept apart:
- priority band: the tenant class's priority; a lower band is always served first;
- fairness between tenants of a band: the waiting tenant with the fewest running requests
  per unit of weight goes next, so no tenant holds more than its share while others wait;
- order within a tenant: first come, first served.

The queue is bounded twice: in total (``max_queued``) and per tenant (its weighted share of
the slots, so a flood of one tenant cannot fill the queue for everyone). What does not fit
is shed at once, with a retry hint; nothing waits longer than ``max_queue_wait_s``.
Pure and synchronous: the caller owns the clock and the waiting (futures, timers).
"""

from __future__ import annotations

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
    """

    id: str
    tenant_id: str
    band: int
    enqueued_at: float


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
    _running: dict[str, int] = field(default_factory=dict)
    _waiting: dict[int, dict[str, deque[Ticket]]] = field(default_factory=dict)
    _num_waiting: int = 0

    @property
    def num_running(self) -> int:
        return sum(self._running.values())

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    def running_of(self, tenant_id: str) -> int:
        return self._running.get(tenant_id, 0)

    def waiting_of(self, tenant_id: str) -> int:
        return sum(len(band.get(tenant_id, ())) for band in self._waiting.values())

    def queue_share(self, tenant_id: str) -> int:
        """Waiting slots the tenant may hold: its weighted share of ``max_queued`` (at least 1)."""
        total = sum(self.weights.values()) or 1.0
        weight = self.weights.get(tenant_id, 1.0)
        return max(1, math.floor(self.limits.max_queued * weight / max(total, weight)))

    def offer(self, ticket: Ticket) -> Offer | Rejection:
        """Runs the ticket now, queues it, or sheds it. Newcomers never overtake waiters."""
        # Invariant: tickets wait only while the pool is full (every release dispatches).
        if self._num_waiting == 0 and self.num_running < self.limits.max_running:
            self._running[ticket.tenant_id] = self._running.get(ticket.tenant_id, 0) + 1
            return Offer.ADMITTED
        if self._num_waiting >= self.limits.max_queued or \
                self.waiting_of(ticket.tenant_id) >= self.queue_share(ticket.tenant_id):
            return Rejection(RejectionReason.POOL_SATURATED, "fair_queue",
                             "The pool is at capacity; retry shortly.",
                             retry_after_s=self.limits.retry_after_s)
        self._waiting.setdefault(ticket.band, {}).setdefault(ticket.tenant_id, deque()).append(ticket)
        self._num_waiting += 1
        return Offer.QUEUED

    def release(self, tenant_id: str) -> list[Ticket]:
        """A running request of the tenant ended: returns the tickets that now run."""
        if self._running.get(tenant_id, 0) > 0:
            self._running[tenant_id] -= 1
        return self._dispatch()

    def cancel(self, ticket: Ticket) -> bool:
        """Drops a waiting ticket (its client left, or it timed out); False if not waiting."""
        queue = self._waiting.get(ticket.band, {}).get(ticket.tenant_id)
        if not queue or ticket not in queue:
            return False
        queue.remove(ticket)
        self._num_waiting -= 1
        return True

    def expired(self, now: float) -> list[Ticket]:
        """Removes and returns the tickets that waited longer than ``max_queue_wait_s``."""
        late = [t for band in self._waiting.values() for queue in band.values() for t in queue
                if now - t.enqueued_at >= self.limits.max_queue_wait_s]
        for ticket in late:
            self.cancel(ticket)
        return late

    def _dispatch(self) -> list[Ticket]:
        admitted = []
        while self.num_running < self.limits.max_running and self._num_waiting:
            band = min(b for b, tenants in self._waiting.items() if any(tenants.values()))
            tenants = self._waiting[band]
            # Fewest running per unit of weight first; the earliest waiter breaks ties.
            tenant_id = min((t for t, q in tenants.items() if q),
                            key=lambda t: (self._running.get(t, 0) / self.weights.get(t, 1.0),
                                           tenants[t][0].enqueued_at))
            ticket = tenants[tenant_id].popleft()
            self._num_waiting -= 1
            self._running[tenant_id] = self._running.get(tenant_id, 0) + 1
            admitted.append(ticket)
        return admitted

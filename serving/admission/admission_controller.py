"""The admission controller: quotas and pool queues shared by every ingress replica.

One Serve replica per application holds all admission state, so quotas and fairness are
exact however many ingress replicas there are (an exact division of each quota among N
replicas would refuse a tenant early whenever the router sends its requests unevenly,
and cannot divide a concurrency limit of 1). The price is one handle call per request to
acquire and a fire-and-forget call to release (measured in docs/benchmarks.md). If the
controller restarts, its counters restart empty: quotas reset, and leases of requests
still running are forgotten (their releases are ignored).

The decisions themselves are the policy core's (``routers.quota``, ``routers.fair_queue``);
this class adds the waiting: a queued request awaits a future that the release of another
request resolves, bounded by the pool's ``max_queue_wait_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from routers import Rejection, RejectionReason, Route
from routers.fair_queue import FairQueue, Offer, PoolLimits, Ticket
from routers.quota import QuotaGrant, QuotaLimits, QuotaStore
from serving.engine.cpu_affinity import place_front_door

logger = logging.getLogger("fabriek.admission")

# The ledger's reason on a request that waited while a power cap held its pool's limit down.
POWER_QUEUED = "queued_for_power"

# A lease not released within this time belongs to an ingress replica that died
# mid-request; its slot and quota are reclaimed.
MAX_LEASE_S = 3600.0
UNLIMITED = QuotaLimits()


@dataclass(frozen=True)
class Lease:
    """An admitted request's hold on its tenant's quota and its route's capacity."""

    request_id: str
    queue_s: float
    reason: str | None = None  # why it waited, when the ledger should say (a power cap)


@dataclass
class _Held:
    grant: QuotaGrant
    route: Route
    acquired_at: float


class AdmissionController:
    """Admits requests to routes under tenant quotas and per-route fair queues.

    Args:
        tenant_limits: tenant id -> quota (a tenant not named is unlimited).
        route_limits: route -> capacity and queue bounds of its engine deployment.
        route_weights: route -> {tenant id: fairness weight} of the tenants that may use it.
        clock: monotonic seconds (injected for tests).
        cores / cpu_nice: where this front-door process runs (``serving.config.domains.FrontDoorPlacement``).
    """

    def __init__(self, tenant_limits: Mapping[str, QuotaLimits], route_limits: Mapping[Route, PoolLimits],
                 route_weights: Mapping[Route, Mapping[str, float]],
                 clock: Callable[[], float] = time.monotonic, cores: frozenset[int] | None = None,
                 cpu_nice: int | None = None):
        place_front_door(cores, cpu_nice)
        self._tenant_limits = dict(tenant_limits)
        self._queues = {r: FairQueue(limits, dict(route_weights.get(r, {})))
                        for r, limits in route_limits.items()}
        self._quota = QuotaStore()
        self._clock = clock
        self._waiters: dict[str, asyncio.Future] = {}
        self._held: dict[str, _Held] = {}
        self._last_sweep = clock()
        self._configured = {r: limits.max_running for r, limits in route_limits.items()}
        self._power_caps: dict[Route, tuple[str, ...]] = {}  # routes held below their limit, by which caps

    async def acquire(self, request_id: str, tenant_id: str, band: int, route: Route,
                      prompt_tokens: int, max_tokens: int, sequences: int = 1) -> Lease | Rejection:
        """Admit one request: size caps, then quota, then the route's queue (may wait).

        Args:
            max_tokens: the most tokens it may generate, all its sequences together.
            sequences: sequences it runs at once (``n``, prompt lists): each takes a
                concurrency slot of the tenant and a running slot of the pool.

        Returns:
            A lease to ``release`` exactly once when the request ends, or a rejection with
            its retry hint.
        """
        now = self._clock()
        self._sweep(now)
        limits = self._tenant_limits.get(tenant_id, UNLIMITED)
        too_large = self._quota.check_size(tenant_id, limits, prompt_tokens, max_tokens, sequences)
        if too_large is not None:
            return too_large
        grant = self._quota.try_acquire(tenant_id, limits, prompt_tokens + max_tokens, now, sequences)
        if isinstance(grant, Rejection):
            return grant
        queue = self._queues[route]
        ticket = Ticket(request_id, tenant_id, band, now, sequences)
        offer = queue.offer(ticket)
        if isinstance(offer, Rejection):
            self._quota.cancel(grant, now)
            return self._for_power(route, offer)
        reason = None
        if offer is Offer.QUEUED:
            reason = POWER_QUEUED if route in self._power_caps else None
            refused = await self._wait(queue, ticket, grant)
            if refused is not None:
                return self._for_power(route, refused)
        self._held[request_id] = _Held(grant, route, self._clock())
        return Lease(request_id, self._clock() - now, reason)

    async def set_power_limits(self, limits: Mapping[str, int], caps: tuple[str, ...] = ()) -> None:
        """Running limits per pool from the power governor (``serving.power``); a pool not
        named goes back to its configured limit.

        Args:
            limits: pool -> the most requests it may run, all its routes together (each
                route gets its configured share of it, at least one).
            caps: names of the caps in force, for the refusals' messages.
        """
        by_pool: dict[str, list[Route]] = {}
        for route in self._queues:
            by_pool.setdefault(route.pool, []).append(route)
        for pool, routes in by_pool.items():
            configured = sum(self._configured[r] for r in routes)
            limit = min(limits.get(pool, configured), configured)
            for route in routes:
                share = self._configured[route] if limit == configured else \
                    max(1, limit * self._configured[route] // configured)
                self._wake(self._queues[route].set_max_running(share))
                if share < self._configured[route]:
                    self._power_caps[route] = tuple(caps)
                else:
                    self._power_caps.pop(route, None)

    def _for_power(self, route: Route, rejection: Rejection) -> Rejection:
        """A full pool whose limit a power cap holds down says so (and when to retry)."""
        caps = self._power_caps.get(route)
        if caps is None or rejection.reason is not RejectionReason.POOL_SATURATED:
            return rejection
        return Rejection(RejectionReason.POWER_CAPPED, "power_budget",
                         f"The pool runs fewer requests under a power cap ({', '.join(caps) or 'grid'}); "
                         "retry later.", retry_after_s=30)

    async def release(self, request_id: str, used_tokens: int) -> None:
        """Ends a request: settles its quota with the tokens it used, frees its slot."""
        held = self._held.pop(request_id, None)
        if held is None:
            return  # released twice, or acquired before a controller restart
        self._quota.settle(held.grant, used_tokens, self._clock())
        self._wake(self._queues[held.route].release(held.grant.tenant_id, held.grant.sequences))

    async def count_refusal(self, tenant_id: str) -> None:
        """A request of the tenant was refused before admission: it counts against its request rate."""
        self._quota.count_refusal(tenant_id, self._tenant_limits.get(tenant_id, UNLIMITED), self._clock())

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Running and waiting requests per route (``pool/model``), for metrics and tests."""
        return {f"{r.pool}/{r.model_id}": {"running": q.num_running, "waiting": q.num_waiting}
                for r, q in self._queues.items()}

    def running_limits(self) -> dict[str, int]:
        """The running limit in force per route (``pool/model``): configured, or a power cap's."""
        return {f"{r.pool}/{r.model_id}": q.limits.max_running for r, q in self._queues.items()}

    async def _wait(self, queue: FairQueue, ticket: Ticket, grant: QuotaGrant) -> Rejection | None:
        future = asyncio.get_running_loop().create_future()
        self._waiters[ticket.id] = future
        try:
            await asyncio.wait_for(asyncio.shield(future), queue.limits.max_queue_wait_s)
            return None
        except TimeoutError:
            if not queue.cancel(ticket):
                return None  # admitted in the same instant the wait ran out
            self._quota.cancel(grant, self._clock())
            return Rejection(RejectionReason.POOL_SATURATED, "fair_queue",
                             f"The pool stayed at capacity for {queue.limits.max_queue_wait_s:g} s; "
                             "retry shortly.", retry_after_s=queue.limits.retry_after_s)
        except asyncio.CancelledError:
            # The caller went away (client disconnect): give back what it held or would hold.
            if queue.cancel(ticket):
                self._quota.cancel(grant, self._clock())
            else:
                self._quota.settle(grant, 0, self._clock())
                self._wake(queue.release(ticket.tenant_id, ticket.size))
            raise
        finally:
            self._waiters.pop(ticket.id, None)

    def _wake(self, admitted: list[Ticket]) -> None:
        for ticket in admitted:
            future = self._waiters.get(ticket.id)
            if future is not None and not future.done():
                future.set_result(None)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for request_id in [r for r, h in self._held.items() if now - h.acquired_at > MAX_LEASE_S]:
            logger.warning("reclaiming lease %s: not released within %d s", request_id, MAX_LEASE_S)
            held = self._held.pop(request_id)
            self._quota.settle(held.grant, held.grant.reserved_tokens, now)
            self._wake(self._queues[held.route].release(held.grant.tenant_id, held.grant.sequences))

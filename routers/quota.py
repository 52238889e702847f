"""Per-tenant quotas: requests and tokens per minute, concurrency, and size caps.

Rates are token buckets that refill continuously (a minute's allowance per minute, with a
minute's worth of burst), so a refused request can be told exactly how long to wait.
Tokens are reserved at admission (prompt tokens plus ``max_tokens``, an upper bound) and
settled when the request ends: what it did not use flows back into the bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from routers.interfaces import Rejection, RejectionReason

SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class QuotaLimits:
    """A tenant's limits; None means unlimited.

    Args:
        requests_per_minute: sustained request rate (burst: one minute's worth).
        tokens_per_minute: prompt plus completion tokens per minute.
        max_concurrent_requests: requests admitted and not yet finished.
        max_tokens: the largest ``max_tokens`` a request may ask for.
        max_prompt_tokens: the largest prompt a request may send.
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    max_tokens: int | None = None
    max_prompt_tokens: int | None = None


@dataclass
class TokenBucket:
    """A bucket of ``capacity`` that refills at ``capacity`` per minute."""

    capacity: float
    level: float
    updated_at: float

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated_at)
        self.level = min(self.capacity, self.level + elapsed * self.capacity / SECONDS_PER_MINUTE)
        self.updated_at = now

    def seconds_until(self, amount: float) -> float:
        """How long until the bucket holds ``amount`` (inf if it never can)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) * SECONDS_PER_MINUTE / self.capacity)


@dataclass(frozen=True)
class QuotaGrant:
    """What one admitted request holds: settle it exactly once with ``QuotaStore.settle``."""

    tenant_id: str
    reserved_tokens: int
    sequences: int = 1


@dataclass
class _TenantState:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    in_flight: int = 0


@dataclass
class QuotaStore:
    """Quota state of every tenant (one store for all ingress replicas: it lives in the
    admission controller). The caller passes the clock reading: decisions replay."""

    _states: dict[str, _TenantState] = field(default_factory=dict)

    def check_size(self, tenant_id: str, limits: QuotaLimits, prompt_tokens: int,
                   max_tokens: int, sequences: int = 1) -> Rejection | None:
        """Refuses a request that no amount of waiting would admit (caps, or bigger than a
        whole minute's token allowance or the concurrency limit).

        Args:
            max_tokens: the most tokens the request may generate, all its sequences together.
            sequences: sequences it runs at once (each counts as a concurrent request).
        """
        if limits.max_concurrent_requests is not None and sequences > limits.max_concurrent_requests:
            return _too_large(f"The request runs {sequences} sequences at once; your limit is "
                              f"{limits.max_concurrent_requests} concurrent requests.")
        if limits.max_prompt_tokens is not None and prompt_tokens > limits.max_prompt_tokens:
            return _too_large(f"The prompt has about {prompt_tokens} tokens; your limit is "
                              f"{limits.max_prompt_tokens}.")
        per_sequence = max_tokens // max(1, sequences)
        if limits.max_tokens is not None and per_sequence > limits.max_tokens:
            return _too_large(f"`max_tokens` is {per_sequence}; your limit is {limits.max_tokens}.")
        if limits.tokens_per_minute is not None and prompt_tokens + max_tokens > limits.tokens_per_minute:
            return _too_large(f"The request may use {prompt_tokens + max_tokens} tokens, more than "
                              f"your {limits.tokens_per_minute} tokens per minute.")
        return None

    def try_acquire(self, tenant_id: str, limits: QuotaLimits, reserved_tokens: int,
                    now: float, sequences: int = 1) -> QuotaGrant | Rejection:
        """Admit one request that may use ``reserved_tokens`` and runs ``sequences`` at once
        (each counts against the concurrency limit), or say how long to wait."""
        state = self._state(tenant_id, limits, now)
        waits = []
        if limits.max_concurrent_requests is not None and \
                state.in_flight + sequences > limits.max_concurrent_requests:
            # A slot frees when a request ends: no exact time; a second is a fair hint.
            waits.append((1.0, f"{limits.max_concurrent_requests} concurrent requests"))
        for bucket, amount, what in ((state.requests, 1, f"{limits.requests_per_minute} requests per minute"),
                                     (state.tokens, reserved_tokens, f"{limits.tokens_per_minute} tokens per minute")):
            if bucket is not None:
                bucket.refill(now)
                if bucket.level < amount:
                    waits.append((bucket.seconds_until(amount), what))
        if waits:
            wait_s, what = max(waits)
            return Rejection(RejectionReason.QUOTA_EXCEEDED, "quota",
                             f"Rate limit reached: your quota is {what}. Retry in {math.ceil(wait_s)} s.",
                             retry_after_s=max(1.0, math.ceil(wait_s)))
        if state.requests is not None:
            state.requests.level -= 1
        if state.tokens is not None:
            state.tokens.level -= reserved_tokens
        state.in_flight += sequences
        return QuotaGrant(tenant_id, reserved_tokens, sequences)

    def settle(self, grant: QuotaGrant, used_tokens: int, now: float) -> None:
        """Ends a request: frees its concurrency slot and returns unused reserved tokens."""
        state = self._states.get(grant.tenant_id)
        if state is None:
            return
        state.in_flight = max(0, state.in_flight - grant.sequences)
        if state.tokens is not None:
            state.tokens.refill(now)
            unused = grant.reserved_tokens - used_tokens  # negative if it used more: charged
            state.tokens.level = min(state.tokens.capacity, state.tokens.level + unused)

    def cancel(self, grant: QuotaGrant, now: float) -> None:
        """Undoes a grant whose request never ran (shed by the pool): returns everything,
        the request itself included."""
        self.settle(grant, used_tokens=0, now=now)
        state = self._states.get(grant.tenant_id)
        if state is not None and state.requests is not None:
            state.requests.refill(now)
            state.requests.level = min(state.requests.capacity, state.requests.level + 1)

    def count_refusal(self, tenant_id: str, limits: QuotaLimits, now: float) -> None:
        """A request of the tenant refused before admission (bad field, unknown model) still
        counts against its request rate: refusals cost the front door too, and must not be
        free to send in a flood."""
        bucket = self._state(tenant_id, limits, now).requests
        if bucket is not None:
            bucket.refill(now)
            bucket.level = max(0.0, bucket.level - 1)

    def in_flight(self, tenant_id: str) -> int:
        """Requests of the tenant admitted and not yet settled."""
        state = self._states.get(tenant_id)
        return state.in_flight if state else 0

    def _state(self, tenant_id: str, limits: QuotaLimits, now: float) -> _TenantState:
        state = self._states.get(tenant_id)
        if state is None:  # a new tenant starts with full buckets
            state = _TenantState(_bucket(limits.requests_per_minute, now),
                                 _bucket(limits.tokens_per_minute, now))
            self._states[tenant_id] = state
        return state


def _bucket(per_minute: int | None, now: float) -> TokenBucket | None:
    return None if per_minute is None else TokenBucket(float(per_minute), float(per_minute), now)


def _too_large(message: str) -> Rejection:
    return Rejection(RejectionReason.REQUEST_TOO_LARGE, "quota", message)

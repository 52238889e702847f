"""Quotas with a fake clock: rates refill, reservations settle, caps refuse at once."""

from __future__ import annotations

import pytest

from routers.interfaces import Rejection, RejectionReason
from routers.quota import QuotaGrant, QuotaLimits, QuotaStore


def test_requests_per_minute_refill_continuously():
    store, limits = QuotaStore(), QuotaLimits(requests_per_minute=3)
    assert all(isinstance(store.try_acquire("t", limits, 0, now=0.0), QuotaGrant) for _ in range(3))
    refused = store.try_acquire("t", limits, 0, now=0.0)
    assert isinstance(refused, Rejection) and refused.reason is RejectionReason.QUOTA_EXCEEDED
    assert refused.retry_after_s == 20  # one request refills in 60 / 3 s
    assert isinstance(store.try_acquire("t", limits, 0, now=20.0), QuotaGrant)
    assert isinstance(store.try_acquire("t", limits, 0, now=20.0), Rejection)


def test_tokens_are_reserved_then_settled_with_real_usage():
    store, limits = QuotaStore(), QuotaLimits(tokens_per_minute=1000)
    grant = store.try_acquire("t", limits, 600, now=0.0)
    assert isinstance(grant, QuotaGrant)
    refused = store.try_acquire("t", limits, 600, now=0.0)  # 400 left, 600 asked
    assert isinstance(refused, Rejection) and refused.retry_after_s == 12  # 200 tokens at 1000/min
    store.settle(grant, used_tokens=100, now=0.0)  # 500 unused flow back
    assert isinstance(store.try_acquire("t", limits, 600, now=0.0), QuotaGrant)


def test_overuse_is_charged():
    store, limits = QuotaStore(), QuotaLimits(tokens_per_minute=100)
    grant = store.try_acquire("t", limits, 50, now=0.0)
    store.settle(grant, used_tokens=90, now=0.0)  # 40 more than reserved
    refused = store.try_acquire("t", limits, 50, now=0.0)  # 10 left
    assert isinstance(refused, Rejection) and refused.retry_after_s == 24


def test_concurrency_frees_on_settle():
    store, limits = QuotaStore(), QuotaLimits(max_concurrent_requests=2)
    grants = [store.try_acquire("t", limits, 0, now=0.0) for _ in range(2)]
    assert isinstance(store.try_acquire("t", limits, 0, now=0.0), Rejection)
    assert store.in_flight("t") == 2
    store.settle(grants[0], 0, now=1.0)
    assert isinstance(store.try_acquire("t", limits, 0, now=1.0), QuotaGrant)


def test_tenants_do_not_share_buckets():
    store, limits = QuotaStore(), QuotaLimits(requests_per_minute=1)
    assert isinstance(store.try_acquire("a", limits, 0, now=0.0), QuotaGrant)
    assert isinstance(store.try_acquire("b", limits, 0, now=0.0), QuotaGrant)


def test_refusal_takes_nothing():
    store, limits = QuotaStore(), QuotaLimits(requests_per_minute=10, tokens_per_minute=100)
    assert isinstance(store.try_acquire("t", limits, 200 - 150, now=0.0), QuotaGrant)
    assert isinstance(store.try_acquire("t", limits, 60, now=0.0), Rejection)  # tokens short
    assert isinstance(store.try_acquire("t", limits, 50, now=0.0), QuotaGrant)  # requests untouched


@pytest.mark.parametrize(("limits", "prompt", "max_tokens", "refused"), [
    (QuotaLimits(max_prompt_tokens=100), 101, 10, True),
    (QuotaLimits(max_prompt_tokens=100), 100, 10, False),
    (QuotaLimits(max_tokens=256), 10, 257, True),
    (QuotaLimits(tokens_per_minute=500), 300, 201, True),  # could never fit in a minute
    (QuotaLimits(), 10**6, 10**6, False),
])
def test_size_caps(limits, prompt, max_tokens, refused):
    decision = QuotaStore().check_size("t", limits, prompt, max_tokens)
    assert (decision is not None) == refused
    if refused:
        assert decision.reason is RejectionReason.REQUEST_TOO_LARGE and decision.retry_after_s is None


def test_sequences_count_as_concurrent_requests_and_a_request_over_the_limit_is_too_large():
    from routers.quota import QuotaLimits, QuotaStore
    limits = QuotaLimits(max_concurrent_requests=4)
    store = QuotaStore()
    grant = store.try_acquire("t", limits, 0, now=0.0, sequences=3)
    assert store.in_flight("t") == 3
    assert store.try_acquire("t", limits, 0, now=0.0, sequences=2).reason.value == "quota_exceeded"
    store.settle(grant, 0, now=1.0)
    assert store.in_flight("t") == 0
    assert store.check_size("t", limits, 0, 10, sequences=5).reason.value == "request_too_large"


def test_refusals_spend_the_request_rate():
    from routers.quota import QuotaLimits, QuotaStore
    limits = QuotaLimits(requests_per_minute=2)
    store = QuotaStore()
    store.count_refusal("t", limits, now=0.0)
    store.count_refusal("t", limits, now=0.0)
    assert store.try_acquire("t", limits, 0, now=0.0).reason.value == "quota_exceeded"

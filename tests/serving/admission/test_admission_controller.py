"""The admission controller's waiting and bookkeeping, on a fake clock, without Ray."""

from __future__ import annotations

import asyncio

import pytest

from routers import Rejection, RejectionReason, Route
from routers.fair_queue import PoolLimits
from routers.quota import QuotaLimits
from serving.admission.admission_controller import AdmissionController, Lease

ROUTE = Route("commercial", "m")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def controller(max_running=1, max_queued=4, wait_s=5.0, limits=None, clock=None):
    return AdmissionController(limits or {}, {ROUTE: PoolLimits(max_running, max_queued, wait_s)},
                               {ROUTE: {"a": 1.0, "b": 1.0}}, clock=clock or Clock())


def test_a_queued_request_runs_when_another_is_released():
    async def scenario():
        ctl = controller()
        first = await ctl.acquire("r1", "a", 0, ROUTE, 10, 10)
        waiting = asyncio.create_task(ctl.acquire("r2", "b", 0, ROUTE, 10, 10))
        await asyncio.sleep(0)
        assert ctl.snapshot()["commercial/m"] == {"running": 1, "waiting": 1}
        await ctl.release(first.request_id, used_tokens=15)
        second = await waiting
        assert isinstance(second, Lease)
        assert ctl.snapshot()["commercial/m"] == {"running": 1, "waiting": 0}
    asyncio.run(scenario())


def test_waiting_ends_with_a_503_and_gives_the_quota_back():
    async def scenario():
        limits = {"b": QuotaLimits(requests_per_minute=1)}
        ctl = controller(wait_s=0.05, limits=limits)
        await ctl.acquire("r1", "a", 0, ROUTE, 1, 1)
        shed = await ctl.acquire("r2", "b", 0, ROUTE, 1, 1)
        assert isinstance(shed, Rejection) and shed.reason is RejectionReason.POOL_SATURATED
        assert shed.retry_after_s == 2.0
        assert ctl.snapshot()["commercial/m"]["waiting"] == 0
        await ctl.release("r1", 2)
        # The shed request's one request per minute was given back.
        assert isinstance(await ctl.acquire("r3", "b", 0, ROUTE, 1, 1), Lease)
    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_queue():
    async def scenario():
        ctl = controller()
        await ctl.acquire("r1", "a", 0, ROUTE, 1, 1)
        waiting = asyncio.create_task(ctl.acquire("r2", "b", 0, ROUTE, 1, 1))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert ctl.snapshot()["commercial/m"] == {"running": 1, "waiting": 0}
        await ctl.release("r1", 2)
        assert ctl.snapshot()["commercial/m"] == {"running": 0, "waiting": 0}
    asyncio.run(scenario())


def test_quota_and_caps_refuse_before_the_queue():
    async def scenario():
        ctl = controller(limits={"a": QuotaLimits(tokens_per_minute=100, max_tokens=50)})
        too_large = await ctl.acquire("r1", "a", 0, ROUTE, 10, 60)
        assert too_large.reason is RejectionReason.REQUEST_TOO_LARGE
        assert isinstance(await ctl.acquire("r2", "a", 0, ROUTE, 40, 50), Lease)
        over = await ctl.acquire("r3", "a", 0, ROUTE, 40, 50)
        assert over.reason is RejectionReason.QUOTA_EXCEEDED and over.retry_after_s >= 1
        assert ctl.snapshot()["commercial/m"]["running"] == 1
    asyncio.run(scenario())


def test_release_is_idempotent():
    async def scenario():
        ctl = controller(max_running=2)
        await ctl.acquire("r1", "a", 0, ROUTE, 1, 1)
        await ctl.release("r1", 1)
        await ctl.release("r1", 1)
        await ctl.release("never-acquired", 1)
        assert ctl.snapshot()["commercial/m"]["running"] == 0
    asyncio.run(scenario())


def test_leases_of_a_dead_ingress_are_reclaimed():
    async def scenario():
        clock = Clock()
        ctl = controller(clock=clock)
        await ctl.acquire("lost", "a", 0, ROUTE, 1, 1)  # never released
        clock.now = 3700.0
        assert isinstance(await ctl.acquire("r2", "b", 0, ROUTE, 1, 1), Lease)
    asyncio.run(scenario())

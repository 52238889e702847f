"""Running limits from the power governor in the admission controller: a lowered limit makes
new requests wait (and the ledger says they waited for power) or be refused for power; a
raised one lets the waiters in; nothing running is cut off."""

from __future__ import annotations

import asyncio

from routers import Rejection, RejectionReason, Route
from routers.fair_queue import FairQueue, PoolLimits, Ticket
from serving.admission.admission_controller import POWER_QUEUED, AdmissionController, Lease

ROUTE = Route("commercial", "m")


def controller(max_running=4, max_queued=2, wait_s=5.0) -> AdmissionController:
    return AdmissionController({}, {ROUTE: PoolLimits(max_running, max_queued, wait_s)},
                               {ROUTE: {"a": 1.0, "b": 1.0}})


def test_a_lowered_limit_queues_new_requests_for_power_and_a_raised_one_admits_them():
    async def scenario():
        ctl = controller()
        running = [await ctl.acquire(f"r{i}", "a", 0, ROUTE, 1, 1) for i in range(2)]
        assert all(isinstance(r, Lease) and r.reason is None for r in running)
        await ctl.set_power_limits({"commercial": 1}, ("grid",))
        assert ctl.running_limits() == {"commercial/m": 1}
        waiting = asyncio.create_task(ctl.acquire("r2", "b", 0, ROUTE, 1, 1))
        await asyncio.sleep(0)
        assert not waiting.done()  # two run above the new limit: they finish, newcomers wait
        await ctl.set_power_limits({}, ())  # the cap is lifted
        lease = await asyncio.wait_for(waiting, 1)
        assert isinstance(lease, Lease) and lease.reason == POWER_QUEUED
        assert ctl.running_limits() == {"commercial/m": 4}

    asyncio.run(scenario())


def test_a_full_queue_under_a_power_cap_is_refused_for_power():
    async def scenario():
        ctl = controller(max_running=2, max_queued=1)
        await ctl.acquire("r0", "a", 0, ROUTE, 1, 1)
        await ctl.set_power_limits({"commercial": 1}, ("grid",))
        queued = asyncio.create_task(ctl.acquire("r1", "a", 0, ROUTE, 1, 1))
        await asyncio.sleep(0)
        refused = await ctl.acquire("r2", "b", 0, ROUTE, 1, 1)
        assert isinstance(refused, Rejection) and refused.reason is RejectionReason.POWER_CAPPED
        assert "grid" in refused.message and refused.retry_after_s == 30
        queued.cancel()

    asyncio.run(scenario())


def test_without_a_cap_a_full_pool_is_saturated_not_capped():
    async def scenario():
        ctl = controller(max_running=1, max_queued=0)
        await ctl.acquire("r0", "a", 0, ROUTE, 1, 1)
        refused = await ctl.acquire("r1", "b", 0, ROUTE, 1, 1)
        assert refused.reason is RejectionReason.POOL_SATURATED

    asyncio.run(scenario())


def test_a_pools_limit_is_shared_by_its_routes_in_their_configured_proportion():
    async def scenario():
        small, large = Route("p", "small"), Route("p", "large")
        ctl = AdmissionController({}, {small: PoolLimits(2, 0, 1.0), large: PoolLimits(6, 0, 1.0)}, {})
        await ctl.set_power_limits({"p": 4}, ("grid",))
        assert ctl.running_limits() == {"p/small": 1, "p/large": 3}
        await ctl.set_power_limits({"p": 1}, ("grid",))
        assert ctl.running_limits() == {"p/small": 1, "p/large": 1}  # never below one each

    asyncio.run(scenario())


def test_fair_queue_takes_a_new_running_limit_and_dispatches_into_it():
    queue = FairQueue(PoolLimits(1, 4, 5.0), {"a": 1.0})
    queue.offer(Ticket("1", "a", 0, 0.0))
    queue.offer(Ticket("2", "a", 0, 0.0))
    queue.offer(Ticket("3", "a", 0, 0.0))
    assert [t.id for t in queue.set_max_running(3)] == ["2", "3"]
    assert queue.set_max_running(1) == [] and queue.num_running == 3  # running ones stay

"""The pool's fair queue: bounded, weighted-fair, bands first, no waiting forever."""

from __future__ import annotations

from itertools import count

from hypothesis import given, settings
from hypothesis import strategies as st

from routers.fair_queue import FairQueue, Offer, PoolLimits, Ticket
from routers.interfaces import Rejection, RejectionReason

_ids = count()


def ticket(tenant, band=0, at=0.0):
    return Ticket(f"r{next(_ids)}", tenant, band, at)


def test_runs_up_to_capacity_then_queues_then_sheds():
    queue = FairQueue(PoolLimits(max_running=2, max_queued=2, max_queue_wait_s=5), {"a": 1})
    assert [queue.offer(ticket("a")) for _ in range(4)] == [Offer.ADMITTED, Offer.ADMITTED,
                                                           Offer.QUEUED, Offer.QUEUED]
    shed = queue.offer(ticket("a"))
    assert isinstance(shed, Rejection) and shed.reason is RejectionReason.POOL_SATURATED
    assert shed.retry_after_s == 2.0


def test_freed_slots_go_to_the_tenant_with_the_smallest_weighted_share():
    queue = FairQueue(PoolLimits(max_running=4, max_queued=20, max_queue_wait_s=5),
                      {"flood": 1, "small": 1})
    for _ in range(4):
        queue.offer(ticket("flood"))
    flood_waiting = [ticket("flood", at=1.0) for _ in range(5)]
    for t in flood_waiting:
        queue.offer(t)
    small = ticket("small", at=2.0)  # arrives after the flood's waiters
    assert queue.offer(small) is Offer.QUEUED
    assert queue.release("flood") == [small]  # small has 0 running: it goes first


def test_weights_set_the_shares():
    queue = FairQueue(PoolLimits(max_running=4, max_queued=40, max_queue_wait_s=5), {"a": 3, "b": 1})
    for _ in range(4):
        queue.offer(ticket("a"))
    for t in [ticket("a", at=1.0) for _ in range(8)] + [ticket("b", at=1.0) for _ in range(8)]:
        queue.offer(t)
    # Drain all four slots, one by one, and refill: a should hold 3 of every 4.
    for _ in range(40):
        for tenant in ("a", "b"):
            if queue.running_of(tenant):
                queue.release(tenant)
                break
        queue.offer(ticket("a", at=2.0))
        queue.offer(ticket("b", at=2.0))
    assert (queue.running_of("a"), queue.running_of("b")) == (3, 1)


def test_lower_band_always_goes_first():
    queue = FairQueue(PoolLimits(max_running=1, max_queued=10, max_queue_wait_s=5), {"gov": 1, "pilot": 1})
    queue.offer(ticket("pilot", band=10))
    early_pilot = ticket("pilot", band=10, at=1.0)
    late_gov = ticket("gov", band=0, at=2.0)
    queue.offer(early_pilot)
    queue.offer(late_gov)
    assert queue.release("pilot") == [late_gov]


def test_a_flood_cannot_take_the_whole_queue():
    queue = FairQueue(PoolLimits(max_running=1, max_queued=10, max_queue_wait_s=5), {"flood": 1, "other": 1})
    queue.offer(ticket("flood"))
    offers = [queue.offer(ticket("flood")) for _ in range(10)]
    assert offers.count(Offer.QUEUED) == 5  # its half of the queue
    assert queue.offer(ticket("other")) is Offer.QUEUED


def test_a_cancelled_waiter_leaves_and_is_never_dispatched():
    # The caller cancels a ticket whose wait ran out (serving.admission.admission_controller).
    queue = FairQueue(PoolLimits(max_running=1, max_queued=10, max_queue_wait_s=5), {"a": 1})
    queue.offer(ticket("a"))
    old, new = ticket("a", at=0.0), ticket("a", at=3.0)
    queue.offer(old)
    queue.offer(new)
    assert queue.cancel(old) and not queue.cancel(old)
    assert queue.num_waiting == 1 and queue.waiting_of("a") == 1
    assert queue.release("a") == [new]
    assert queue.num_waiting == 0 and queue.num_running == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["offer", "release", "cancel"]),
                          st.sampled_from(["a", "b", "c"]), st.sampled_from([0, 10])),
                max_size=80),
       st.integers(1, 4), st.integers(0, 6))
def test_bounds_always_hold(ops, max_running, max_queued):
    queue = FairQueue(PoolLimits(max_running, max_queued, max_queue_wait_s=3), {"a": 1, "b": 2, "c": 1})
    now, offered = 0.0, []
    for op, tenant, band in ops:
        now += 1.0
        if op == "offer":
            offered.append(ticket(tenant, band, at=now))
            queue.offer(offered[-1])
        elif op == "release":
            queue.release(tenant)
        elif offered:
            queue.cancel(offered.pop(0))  # the oldest: its wait ran out
        assert queue.num_running <= max_running
        assert queue.num_waiting <= max_queued
        # The counters agree with the queues themselves.
        assert queue.num_running == sum(queue.running_of(t) for t in "abc")
        assert queue.num_waiting == sum(queue.waiting_of(t) for t in "abc") == sum(
            len(q) for band in queue._waiting.values() for q in band.values())
        # Nobody waits while a slot is free.
        assert queue.num_waiting == 0 or queue.num_running == max_running


def test_a_request_of_several_sequences_takes_that_many_slots_and_is_not_overtaken():
    queue = FairQueue(PoolLimits(max_running=4, max_queued=4, max_queue_wait_s=5), {"a": 1, "b": 1})
    assert queue.offer(Ticket("a1", "a", 0, 0.0, size=3)) is Offer.ADMITTED
    assert queue.num_running == 3 and queue.running_of("a") == 3
    big = Ticket("b1", "b", 0, 1.0, size=2)
    assert queue.offer(big) is Offer.QUEUED  # 3 + 2 > 4
    assert queue.offer(Ticket("b2", "b", 0, 2.0)) is Offer.QUEUED  # a newcomer waits behind it
    assert queue.release("a", size=3) == [big, Ticket("b2", "b", 0, 2.0)]
    assert queue.num_running == 3


def test_a_request_larger_than_the_pool_runs_alone_rather_never():
    queue = FairQueue(PoolLimits(max_running=2, max_queued=2, max_queue_wait_s=5), {"a": 1})
    assert queue.offer(Ticket("a1", "a", 0, 0.0, size=5)) is Offer.ADMITTED
    assert queue.offer(Ticket("a2", "a", 0, 0.0)) is Offer.QUEUED
    assert [t.id for t in queue.release("a", size=5)] == ["a2"]

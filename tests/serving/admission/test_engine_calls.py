"""The in-process engine stream of the direct layout: items pass through in order, the engine's
error reaches the reader, and cancelling (from a timer, while the reader waits, or before the
call even started) stops the engine's generator and ends the reader's wait. No Ray."""

from __future__ import annotations

import asyncio

import pytest

from routers import Route
from serving.admission.engine_calls import InProcessCalls, TaskStream

ROUTE = Route("pool", "model")


class Engine:
    """A stand-in engine server: ``chat`` streams ``items`` then waits or fails as told."""

    def __init__(self, items, then: str = "end"):
        self.items, self.then = list(items), then
        self.closed = asyncio.Event()
        self.probed = 0

    async def chat(self, body):
        async def answer():
            try:
                for item in self.items:
                    yield item
                if self.then == "hang":
                    await asyncio.sleep(3600)
                if self.then == "fail":
                    raise RuntimeError("engine step failed")
            finally:
                self.closed.set()
        return answer()

    async def probe_engine(self):
        self.probed += 1


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 10))


def test_items_pass_through_in_order_then_the_end_stays_the_end():
    async def scenario():
        engine = Engine([1, 2, 3])
        stream = InProcessCalls(ROUTE, engine).stream(ROUTE, "chat", {})
        assert [item async for item in stream] == [1, 2, 3]
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        assert engine.closed.is_set()
    run(scenario)


def test_the_engines_error_reaches_the_reader_after_the_items_before_it():
    async def scenario():
        stream = TaskStream(Engine(["a"], then="fail").chat({}))
        assert await stream.__anext__() == "a"
        with pytest.raises(RuntimeError, match="engine step failed"):
            await stream.__anext__()
    run(scenario)


def test_cancel_while_the_reader_waits_stops_the_engine_and_ends_the_wait():
    async def scenario():
        engine = Engine(["a"], then="hang")
        stream = TaskStream(engine.chat({}))
        assert await stream.__anext__() == "a"
        asyncio.get_running_loop().call_later(0.05, stream.cancel)  # as the deadline timer does
        with pytest.raises(asyncio.CancelledError):
            await stream.__anext__()
        await asyncio.wait_for(engine.closed.wait(), 1)
    run(scenario)


def test_cancel_before_the_call_ran_still_ends_the_wait():
    async def scenario():
        stream = TaskStream(Engine(["a"]).chat({}))
        stream.cancel()  # before the task took its first step
        with pytest.raises(asyncio.CancelledError):
            await stream.__anext__()
    run(scenario)


def test_another_route_is_refused_and_the_probe_reaches_the_engine():
    async def scenario():
        engine = Engine([])
        calls = InProcessCalls(ROUTE, engine)
        with pytest.raises(KeyError):
            calls.stream(Route("other", "model"), "chat", {})
        [probe] = calls.probes().values()
        await probe()
        assert calls.routes == (ROUTE,) and engine.probed == 1
    run(scenario)

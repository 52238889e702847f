"""FirstChunkBatcher: first item at once, later items batched per interval."""

from __future__ import annotations

import asyncio

import pytest

from serving.engine.llm_server import FirstChunkBatcher


async def ticking(n: int, gap_s: float = 0.0, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("engine failed")
        yield i
        await asyncio.sleep(gap_s)


def run(coro):
    return asyncio.run(coro)


def test_slow_stream_yields_each_item_at_once():
    async def main():
        batches = []
        async for batch in FirstChunkBatcher(ticking(5, gap_s=0.03), interval_s=0.01).stream():
            batches.append(batch)
        return batches
    assert run(main()) == [[0], [1], [2], [3], [4]]


def test_zero_interval_is_eager_and_loses_nothing():
    async def main():
        batches = []
        async for batch in FirstChunkBatcher(ticking(20), interval_s=0).stream():
            batches.append(batch)
        return batches
    assert [i for batch in run(main()) for i in batch] == list(range(20))


def test_first_item_is_not_held_back():
    async def slow_after_first():
        yield "first"
        await asyncio.sleep(10)
        yield "second"

    async def main():
        stream = FirstChunkBatcher(slow_after_first(), interval_s=0.05).stream()
        first = await asyncio.wait_for(stream.__anext__(), timeout=1)
        await stream.aclose()
        return first
    assert run(main()) == ["first"]


def test_fast_stream_is_batched_after_the_first_item():
    async def main():
        batches = []
        async for batch in FirstChunkBatcher(ticking(50, gap_s=0.002), interval_s=0.03).stream():
            batches.append(batch)
        return batches
    batches = run(main())
    assert batches[0] == [0]
    assert [i for batch in batches for i in batch] == list(range(50))
    assert len(batches) < 15


def test_source_error_is_raised_after_the_items_before_it():
    async def main():
        seen = []
        async for batch in FirstChunkBatcher(ticking(5, fail_at=3), interval_s=0.01).stream():
            seen.extend(batch)
        return seen
    with pytest.raises(RuntimeError, match="engine failed"):
        run(main())


def test_closing_the_stream_cancels_the_source():

    async def main():
        state = {"closed": False}

        async def endless():
            try:
                while True:
                    yield 1
                    await asyncio.sleep(0.001)
            finally:
                state["closed"] = True

        stream = FirstChunkBatcher(endless(), interval_s=0.01).stream()
        await stream.__anext__()
        await stream.aclose()
        await asyncio.sleep(0.01)
        return state["closed"]
    assert run(main()) is True


def test_an_engine_request_past_its_time_limit_is_aborted_even_without_a_reader():
    """An orphan (its front door died) is not cancelled by Ray Serve: the engine's own bound
    closes the engine stream, which vLLM takes as an abort."""
    import asyncio

    from serving.engine.llm_server import Stamped, stamp_first

    closed = []

    async def engine():
        try:
            yield "first"
            await asyncio.sleep(3600)  # a generation that would run on
            yield "never"
        finally:
            closed.append(True)

    async def run():
        stream = stamp_first(engine(), "pool--m", "r1", max_duration_s=0.2)
        assert isinstance(await anext(stream), Stamped)
        started = asyncio.get_running_loop().time()
        try:
            await anext(stream)
        except TimeoutError:
            return asyncio.get_running_loop().time() - started
        raise AssertionError("the stream outlived its limit")

    assert asyncio.run(run()) < 1.0
    assert closed == [True]


def test_an_engine_request_whose_limit_passes_while_its_reader_holds_an_item_ends_at_the_next():
    """The limit interrupts only the wait for an item; one that passes between items ends
    the stream when the reader asks for the next one, even if the engine would hang."""
    import asyncio

    from serving.engine.llm_server import stamp_first

    async def engine():
        yield "first"
        await asyncio.sleep(3600)
        yield "never"

    async def run():
        stream = stamp_first(engine(), "pool--m", "r1", max_duration_s=0.1)
        await anext(stream)
        await asyncio.sleep(0.3)  # the reader is busy past the limit
        try:
            await asyncio.wait_for(anext(stream), 1)
        except TimeoutError as err:
            return str(err)
        raise AssertionError("the stream outlived its limit")

    assert "ran past" in asyncio.run(run())

"""Reading a stream ahead of its consumer: batches of what arrived, errors in order, closing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest

from chatplane.agent.llm.ready_batches import ready_batches


async def _paced(items: list[int], gap: float, closed: list[bool]) -> AsyncGenerator[int]:
    try:
        for item in items:
            await asyncio.sleep(gap)
            yield item
    finally:
        closed.append(True)


async def test_a_fast_consumer_gets_one_item_per_batch() -> None:
    closed: list[bool] = []
    batches = [b async for b in ready_batches(_paced([1, 2, 3], 0.01, closed))]
    assert batches == [[1], [2], [3]]
    assert closed == [True]


async def test_a_slow_consumer_gets_what_arrived_meanwhile_in_order() -> None:
    closed: list[bool] = []
    event = asyncio.Event()

    async def source() -> AsyncGenerator[int]:
        yield 1
        await event.wait()
        for item in (2, 3, 4):
            yield item

    batches: list[list[int]] = []
    async for batch in ready_batches(source()):
        batches.append(batch)
        if batch == [1]:
            event.set()
            await asyncio.sleep(0.05)  # busy writing the first item: 2, 3, 4 queue up
    assert batches == [[1], [2, 3, 4]]
    assert closed == []


async def test_an_error_comes_after_the_items_read_before_it() -> None:
    async def failing() -> AsyncGenerator[int]:
        yield 1
        yield 2
        raise ValueError("upstream failed")

    seen: list[int] = []
    with pytest.raises(ValueError, match="upstream failed"):
        async for batch in ready_batches(failing()):
            seen.extend(batch)
            await asyncio.sleep(0.01)
    assert seen == [1, 2]


async def test_closing_early_closes_the_source_at_once() -> None:
    closed: list[bool] = []
    batches = ready_batches(_paced(list(range(100)), 10.0, closed))
    async with contextlib.aclosing(batches):
        reader = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.01)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert closed == [True]


async def test_read_ahead_is_bounded() -> None:
    pulled: list[int] = []

    async def counted() -> AsyncGenerator[int]:
        for item in range(50):
            pulled.append(item)
            yield item

    batches = ready_batches(counted(), max_read_ahead=4)
    async with contextlib.aclosing(batches):
        first = await anext(batches)
        await asyncio.sleep(0.01)
        assert len(pulled) <= len(first) + 4 + 1

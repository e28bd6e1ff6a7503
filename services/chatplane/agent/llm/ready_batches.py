"""Reading a provider's stream ahead of its consumer: a reader task pulls items while the
consumer is busy (writing the previous token to the Gateway), and the consumer then takes
every item that arrived meanwhile at once. On an idle machine each batch is one item; when the
Agent falls behind, a batch holds what queued up, so a backend can send it as one text chunk
and the per-message cost of the rest of the chain (gRPC, Gateway, Envoy) shrinks as the load
grows instead of adding to it (docs/chain-latency.md). Nothing waits for a batch to fill."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import TypeVar

T = TypeVar("T")

# Items read ahead at most; the reader then waits for the consumer (backpressure).
MAX_READ_AHEAD = 256


class _End:
    """The source is exhausted."""


_END = _End()


async def ready_batches(
    source: AsyncGenerator[T], *, max_read_ahead: int = MAX_READ_AHEAD
) -> AsyncGenerator[list[T]]:
    """The items of `source` in order, in batches of those already read when asked for; an
    exception of `source` is raised after the items read before it. Closing this iterator
    cancels the reader, which closes `source` within the reader's current await."""
    queue: asyncio.Queue[T | _End | Exception] = asyncio.Queue(max_read_ahead)

    async def read() -> None:
        try:
            async with contextlib.aclosing(source):
                async for item in source:
                    await queue.put(item)
        except Exception as error:  # handed to the consumer, in order
            await queue.put(error)
            return
        await queue.put(_END)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            batch: list[T] = []
            last: T | _End | Exception = await queue.get()
            while True:
                if isinstance(last, _End | Exception):
                    break
                batch.append(last)
                if queue.empty():
                    break
                last = queue.get_nowait()
            if batch:
                yield batch
            if isinstance(last, _End):
                return
            if isinstance(last, Exception):
                raise last
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

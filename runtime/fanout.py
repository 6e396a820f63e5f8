"""Several generations of one request (``n`` choices, a list of prompts) run side by side.

``merge`` drives each stream in its own task and yields their events as they come, tagged
with the stream's index, so a slow choice never holds back the others' tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """``(index, event)`` from every stream, in arrival order; each stream's own order is kept.

    The first stream to raise ends the merge with its exception; closing the merge early (the
    client went away, an error) cancels every stream still running, which aborts its engine
    request (``EngineClient.generate`` aborts a request it leaves early).
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event))
        except Exception as exc:  # handed to the consumer, who raises it
            queue.put_nowait((index, _Failed(exc)))
        finally:
            queue.put_nowait((index, _DONE))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, _Failed):
                raise item.exc
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""``runtime.fanout.merge``: the choices of one request run side by side; an error or an early
close stops every one of them (which is what aborts their engine requests)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.fanout import merge


async def _ticks(name: str, delays: list[float], log: list[str]):
    try:
        for i, delay in enumerate(delays):
            await asyncio.sleep(delay)
            yield f"{name}{i}"
        log.append(f"{name} done")
    finally:
        log.append(f"{name} closed")


async def _collect(stream) -> list:
    return [item async for item in stream]


def test_events_come_as_they_arrive_each_stream_in_order():
    log: list[str] = []
    # b's second event comes before a's first: a slow choice does not hold back the others.
    got = asyncio.run(_collect(merge([_ticks("a", [0.03, 0.0], log),
                                      _ticks("b", [0.0, 0.0, 0.0], log)])))
    assert got[:3] == [(1, "b0"), (1, "b1"), (1, "b2")]
    assert got[3:] == [(0, "a0"), (0, "a1")]
    assert sorted(log) == ["a closed", "a done", "b closed", "b done"]


def test_one_failing_stream_raises_and_cancels_the_rest():
    log: list[str] = []

    async def failing():
        yield "x0"
        raise ValueError("engine said no")

    async def run():
        seen = []
        with pytest.raises(ValueError, match="engine said no"):
            async for item in merge([_ticks("slow", [0.0, 10.0], log), failing()]):
                seen.append(item)
        return seen

    seen = asyncio.run(run())
    assert (1, "x0") in seen and (0, "slow1") not in seen
    assert log == ["slow closed"]  # cancelled mid-sleep: never done, but its cleanup ran


def test_closing_early_cancels_every_running_stream():
    log: list[str] = []

    async def run():
        stream = merge([_ticks("a", [0.0, 10.0], log), _ticks("b", [0.0, 10.0], log)])
        first = await anext(stream)
        await stream.aclose()
        return first

    assert asyncio.run(run())[1] in ("a0", "b0")
    assert sorted(log) == ["a closed", "b closed"]


def test_no_streams_is_an_empty_merge():
    assert asyncio.run(_collect(merge([]))) == []

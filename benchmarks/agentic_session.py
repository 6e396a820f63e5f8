"""One agent session of B2 over the Responses WebSocket, timed turn by turn.

Turn 1 sends the shared system prompt as ``instructions`` and the session's unique context as a
user message; every later turn sends only a ``function_call_output`` (the tool's result) with
``previous_response_id``, so the server continues from the exact tokens of the turn before.
Every turn is greedy with ``ignore_eos`` (an agentspeed extension of the Responses request) and
``max_output_tokens``, so each generates exactly that many tokens.

Times come from ``time.perf_counter`` on the client: TTFT is send -> first
``response.output_text.delta``; the decode time is first -> last delta, spread over
``usage.output_tokens - 1`` steps. A *probe* (reference) is a branch off the same previous
response with a different tool output of the same length and one output token: on an idle
server its TTFT is the time to prefill those new tokens on that context, as served. It is sent
right after the turn it mirrors, so the turn itself never profits from the probe's tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException


@dataclass(frozen=True)
class SessionPlan:
    index: int  # session number within its level
    system_text: str  # shared by every session (the same text, the same tokens)
    context_text: str  # unique to this session
    tool_texts: list[str]  # turns 2..N: one tool output per turn
    probe_texts: list[str]  # same shape; empty: no reference probes
    gen_tokens: int


@dataclass
class TurnTiming:
    turn: int  # 1-based
    response_id: str
    prompt_tokens: int  # usage.input_tokens
    cached_tokens: int  # usage.input_tokens_details.cached_tokens
    output_tokens: int  # usage.output_tokens
    ttft_s: float | None  # send -> first text delta; None: no text was streamed
    decode_s: float | None  # first -> last text delta
    total_s: float  # send -> the terminal event


@dataclass
class SessionResult:
    turns: list[TurnTiming] = field(default_factory=list)
    probes: list[TurnTiming] = field(default_factory=list)  # probes[i] follows turn i + 2
    error: str | None = None
    stopped: str | None = None  # why the session ended early without an error


class TurnError(RuntimeError):
    """The server failed or refused a turn (an ``error`` event or ``response.failed``)."""


async def timed_turn(ws, turn: int, create: dict, stall_s: float) -> TurnTiming:
    """Send one ``response.create`` and time its stream until the terminal event; a stream
    silent for ``stall_s`` seconds is a ``TurnError`` (the server is stuck, not slow)."""
    start = time.perf_counter()
    await ws.send(json.dumps({"type": "response.create", **create}))
    first = last = None
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout=stall_s)
        except TimeoutError:
            raise TurnError(f"turn {turn}: no event for {stall_s:.0f} s") from None
        now = time.perf_counter()
        event = json.loads(raw)
        kind = event.get("type")
        if kind == "response.output_text.delta":
            first = first or now
            last = now
        elif kind in ("response.completed", "response.incomplete"):
            response = event["response"]
            usage = response["usage"]
            return TurnTiming(
                turn=turn, response_id=response["id"], prompt_tokens=usage["input_tokens"],
                cached_tokens=usage["input_tokens_details"]["cached_tokens"],
                output_tokens=usage["output_tokens"],
                ttft_s=None if first is None else first - start,
                decode_s=None if first is None else last - first,
                total_s=now - start)
        elif kind == "response.failed":
            raise TurnError(f"turn {turn} failed: {event['response']['error']['message']}")
        elif kind == "error":
            err = event.get("error", {})
            raise TurnError(f"turn {turn} refused: {err.get('code')}: {err.get('message')}")


def _tool_output(turn: int, text: str) -> list[dict]:
    return [{"type": "function_call_output", "call_id": f"call_{turn}", "output": text}]


async def run_session(url: str, plan: SessionPlan, result: SessionResult, deadline: float,
                      stall_s: float) -> None:
    """Run the plan's turns into ``result`` (kept even if cancelled part-way).

    A turn starts only if one like the previous (with its probe), 25% slower, would still end
    before ``deadline`` (``time.perf_counter`` seconds); otherwise the session stops with
    ``result.stopped`` set. Server errors and stalls (``stall_s`` without an event) end the
    session with ``result.error``; they never raise.
    """
    sampling = {"max_output_tokens": plan.gen_tokens, "temperature": 0, "ignore_eos": True}
    try:
        async with connect(url, max_size=None, ping_interval=None, open_timeout=60,
                           close_timeout=5) as ws:
            create = {"instructions": plan.system_text, **sampling,
                      "input": [{"type": "message", "role": "user",
                                 "content": plan.context_text}]}
            last_s = 0.0
            for turn in range(1, len(plan.tool_texts) + 2):
                if time.perf_counter() + 1.25 * last_s > deadline:
                    result.stopped = f"time budget (before turn {turn})"
                    return
                prev = result.turns[-1].response_id if result.turns else None
                if turn > 1:
                    create = {"previous_response_id": prev, **sampling,
                              "input": _tool_output(turn, plan.tool_texts[turn - 2])}
                timing = await timed_turn(ws, turn, create, stall_s)
                result.turns.append(timing)
                last_s = timing.total_s
                if turn > 1 and plan.probe_texts:
                    # After the turn, so the turn never finds the probe's tokens in the cache
                    # (their template prefix is the same); the probe may find the turn's.
                    probe = {"previous_response_id": prev, "store": False,
                             "max_output_tokens": 1, "temperature": 0, "ignore_eos": True,
                             "input": _tool_output(turn, plan.probe_texts[turn - 2])}
                    result.probes.append(await timed_turn(ws, turn, probe, stall_s))
                    last_s += result.probes[-1].total_s
    except TurnError as exc:
        result.error = str(exc)
    except (WebSocketException, OSError, ValueError, KeyError) as exc:  # refused, dropped, bad
        result.error = f"{type(exc).__name__}: {exc}"

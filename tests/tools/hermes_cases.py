"""Helpers for the Hermes parser's tests: stream a text in given chunks, check the event
protocol, and compare streamed events with the one-shot parse."""

from __future__ import annotations

import re

from tools.parsers import (
    HermesToolParser,
    ParsedOutput,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
)

CALL_ID = re.compile(r"call_[A-Za-z0-9_-]{24}")
OPEN, CLOSE = "<tool_call>", "</tool_call>"


def stream(text: str, cuts: list[int]) -> list:
    """Feed ``text`` split at ``cuts`` (any order, duplicates allowed) to a fresh parser."""
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(text))), len(text)]
    parser = HermesToolParser()
    events = []
    for lo, hi in zip(bounds, bounds[1:]):
        events += parser.feed(text[lo:hi])
    events += parser.finish()
    return events


def check_protocol(events: list) -> None:
    open_index, next_index, args, ids = None, 0, [], set()
    for e in events:
        if isinstance(e, TextDelta):
            assert open_index is None, "text inside a call"
            assert e.text, "empty text delta"
        elif isinstance(e, ToolCallStart):
            assert open_index is None and e.index == next_index, (e, next_index)
            assert CALL_ID.fullmatch(e.call_id) and e.call_id not in ids, e.call_id
            assert e.name, "empty name"
            ids.add(e.call_id)
            open_index, next_index, args = e.index, next_index + 1, []
        elif isinstance(e, ToolCallArgsDelta):
            assert e.index == open_index and e.delta, e
            args.append(e.delta)
        else:
            assert isinstance(e, ToolCallEnd) and e.index == open_index, e
            assert e.arguments == "".join(args), "End.arguments must equal the joined deltas"
            open_index = None
    assert open_index is None, "a call was left open"


def canonical(events: list) -> list[tuple]:
    """Merge adjacent text / same-call argument deltas; drop random call ids."""
    out: list[tuple] = []
    for e in events:
        if isinstance(e, TextDelta):
            item = ("text", None, e.text)
        elif isinstance(e, ToolCallArgsDelta):
            item = ("args", e.index, e.delta)
        elif isinstance(e, ToolCallStart):
            item = ("start", e.index, e.name)
        else:
            item = ("end", e.index, e.arguments)
        if item[0] in ("text", "args") and out and out[-1][:2] == item[:2]:
            out[-1] = (item[0], item[1], out[-1][2] + item[2])
        else:
            out.append(item)
    return out


def summary(parsed: ParsedOutput) -> tuple:
    return parsed.content, [(c.name, c.arguments) for c in parsed.tool_calls]


def events_summary(events: list) -> tuple:
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    names = {e.index: e.name for e in events if isinstance(e, ToolCallStart)}
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, ToolCallArgsDelta):
            args[e.index] = args.get(e.index, "") + e.delta
    return text, [(names[i], args.get(i, "")) for i in sorted(names)]


def assert_same_any_split(text: str, cuts: list[int]) -> list:
    events = stream(text, cuts)
    check_protocol(events)
    whole = stream(text, [])
    assert canonical(events) == canonical(whole)
    assert events_summary(events) == summary(HermesToolParser.parse(text))
    return events

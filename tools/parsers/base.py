"""Tool-call parser contract: turn a model's decoded output into content text and tool calls.

A parser instance belongs to one response and is fed the decoded text as it streams. Chunks may
be any size — one character, one token, a speculative-decoding burst of several tokens, or the
whole message — and the events a parser emits must not depend on how the text was split: merge
adjacent ``TextDelta``s and adjacent ``ToolCallArgsDelta``s of one call and every split gives the
same sequence. ``parse`` is the same machine fed the whole text at once, so the streaming and
non-streaming paths agree by construction.

Event protocol, per response:
- ``TextDelta`` only between calls, never between a call's start and end.
- Calls are numbered 0, 1, ... in order; ``ToolCallStart(i)`` comes first, then zero or more
  ``ToolCallArgsDelta(i)``, then ``ToolCallEnd(i)`` whose ``arguments`` equals the deltas joined.
- No event carries an empty string delta.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeVar

import msgspec


class TextDelta(msgspec.Struct, frozen=True):
    """Normal assistant content."""

    text: str


class ToolCallStart(msgspec.Struct, frozen=True):
    """A tool call began; its name is known."""

    index: int  # 0-based position of the call in this response
    call_id: str  # "call_" + 24 url-safe chars, generated here (never taken from the model)
    name: str


class ToolCallArgsDelta(msgspec.Struct, frozen=True):
    """More raw text of the call's ``arguments`` JSON, exactly as the model wrote it."""

    index: int
    delta: str


class ToolCallEnd(msgspec.Struct, frozen=True):
    """The call is finished; ``arguments`` is all its deltas joined."""

    index: int
    arguments: str  # JSON text of the arguments object (incomplete only if the output was cut)


ParserEvent = TextDelta | ToolCallStart | ToolCallArgsDelta | ToolCallEnd


class ParsedToolCall(msgspec.Struct, frozen=True):
    name: str
    arguments: str  # JSON text of the arguments object, as the model wrote it
    call_id: str = ""  # the id the streamed ToolCallStart carried, when built from events


class ParsedOutput(msgspec.Struct, frozen=True):
    content: str  # all text outside tool calls, joined
    tool_calls: list[ParsedToolCall]


def new_call_id() -> str:
    """``call_`` + 24 random url-safe characters (18 random bytes, base64url)."""
    return "call_" + secrets.token_urlsafe(18)


def fold_events(events: list[ParserEvent]) -> ParsedOutput:
    """Assemble a complete event stream into the non-streaming result."""
    text_parts: list[str] = []
    starts: dict[int, ToolCallStart] = {}
    ends: dict[int, ToolCallEnd] = {}
    for event in events:
        if isinstance(event, TextDelta):
            text_parts.append(event.text)
        elif isinstance(event, ToolCallStart):
            starts[event.index] = event
        elif isinstance(event, ToolCallEnd):
            ends[event.index] = event
    assert starts.keys() == ends.keys(), "every started call must end"
    calls = [
        ParsedToolCall(starts[i].name, ends[i].arguments, starts[i].call_id) for i in sorted(starts)
    ]
    return ParsedOutput("".join(text_parts), calls)


class ToolCallParser(ABC):
    """Streaming parser for one model output format; one instance per response, not thread-safe.

    ``feed`` then ``finish`` once; nothing may be fed after ``finish``. A parser may hold back a
    short tail of text (e.g. a suffix that could begin a tool-call tag) until later text or
    ``finish`` decides what it is.
    """

    name = ""  # registry name, set by ``register_parser``

    @abstractmethod
    def feed(self, text_delta: str) -> list[ParserEvent]:
        """Consume the next chunk of decoded output; return the events it completes."""

    @abstractmethod
    def finish(self) -> list[ParserEvent]:
        """The output ended (stop, length, abort): flush held text and end any open call."""

    @classmethod
    def parse(cls, full_text: str) -> ParsedOutput:
        """Non-streaming parse: the streaming machine fed the whole text at once."""
        parser = cls()
        events = parser.feed(full_text)
        events += parser.finish()
        return fold_events(events)


class CallsOnly(ToolCallParser):
    """``inner`` for output that constrained decoding limits to tool calls (``tool_choice``
    required or named). Text can then only be markup of a call the output cut off before the
    call committed (``finish_reason == "length"`` right after ``<tool_call>``), never content:
    it is dropped instead of being shown as the assistant's text."""

    def __init__(self, inner: ToolCallParser) -> None:
        self.inner = inner

    def feed(self, text_delta: str) -> list[ParserEvent]:
        return [e for e in self.inner.feed(text_delta) if not isinstance(e, TextDelta)]

    def finish(self) -> list[ParserEvent]:
        return [e for e in self.inner.finish() if not isinstance(e, TextDelta)]


_P = TypeVar("_P", bound=type[ToolCallParser])
_REGISTRY: dict[str, type[ToolCallParser]] = {}


def register_parser(name: str) -> Callable[[_P], _P]:
    """Class decorator: make a parser available as ``get_parser(name)``."""

    def decorate(cls: _P) -> _P:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"tool-call parser {name!r} is already registered")
        _REGISTRY[name] = cls
        if not cls.name:
            cls.name = name
        return cls

    return decorate


def get_parser(name: str) -> type[ToolCallParser]:
    """The parser class registered as ``name``; instantiate it once per response."""
    from tools.parsers import hermes  # noqa: F401  (registers the built-in parsers)

    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown tool-call parser {name!r}; known: {known}") from None


def available_parsers() -> list[str]:
    from tools.parsers import hermes  # noqa: F401

    return sorted(_REGISTRY)

"""Hermes / Qwen2.5 tool calls: ``<tool_call>\\n{"name": "fn", "arguments": {...}}\\n</tool_call>``.

Rules, shared by streaming and ``parse`` (one machine, see ``base``):

1. Text outside tool-call blocks is content, verbatim — except that a whitespace-only stretch
   between two calls, or between a call and the start or end of the output, is dropped.
2. ``<tool_call>`` opens a block: optional whitespace, one JSON object (strict RFC 8259), then
   optional whitespace and ``</tool_call>``. Tags inside JSON strings are just string content.
3. The object needs a non-empty string ``"name"`` and an object ``"arguments"`` (alias
   ``"parameters"``), in either order; other members are skipped; no arguments member means
   ``{}``. ``arguments`` is the raw text the model wrote for that value, never re-serialised.
4. A call *commits* once its name is complete and its arguments object has opened (without
   arguments: when the object closes). ``ToolCallStart`` is emitted then, and the arguments
   stream from there on, each delta as soon as it is scanned.
5. Before commit, anything wrong (not JSON, no name, name not a non-empty string, arguments not
   an object, the output ending) makes the whole block content: the tag and everything after it
   are read again as text.
6. A committed call cannot be taken back. A JSON error later on ends the call with the arguments
   scanned so far (a valid JSON prefix) and drops the text up to and including the next
   ``</tool_call>``; output ending inside the object ends the call the same way (truncated
   arguments, as OpenAI reports them for ``finish_reason == "length"``).
7. After the object, whitespace and ``</tool_call>`` are consumed; if other text comes instead
   (the model left out the close tag) it is read as text. A close tag cut off by the end of the
   output is dropped.
"""

from __future__ import annotations

import json

from tools.parsers.base import (
    ParserEvent,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallParser,
    ToolCallStart,
    new_call_id,
    register_parser,
)
from tools.parsers.json_scan import JSON_WS, STATUS_DONE, STATUS_ERROR, JsonObjectScanner

TAG_OPEN = "<tool_call>"
TAG_CLOSE = "</tool_call>"
_ARGUMENT_KEYS = ("arguments", "parameters")

# Modes.
_TEXT = 0  # content; looking for TAG_OPEN
_OBJECT = 1  # inside a block, scanning its JSON object
_AFTER_OBJECT = 2  # object closed; expecting whitespace and TAG_CLOSE
_DISCARD = 3  # a committed call broke; skipping to TAG_CLOSE


def _partial_suffix_len(text: str, tag: str) -> int:
    """Length of the longest proper prefix of ``tag`` that ``text`` ends with."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


@register_parser("hermes")
class HermesToolParser(ToolCallParser):
    """Streaming parser for the Hermes format (Qwen2.5, Qwen3, NousResearch Hermes 2/3)."""

    def __init__(self) -> None:
        self._mode = _TEXT
        self._buf = ""  # the text being processed, from ``_pos`` on
        self._pos = 0
        # _TEXT: unreleased tail (a whitespace-only run, and/or a possible start of TAG_OPEN);
        # _AFTER_OBJECT: whitespace plus the part of TAG_CLOSE seen; _DISCARD: a partial TAG_CLOSE.
        self._held = ""
        self._close_len = 0  # _AFTER_OBJECT: characters of TAG_CLOSE matched
        self._run_has_text = False  # the content run since the last call has non-space text
        self._num_calls = 0
        self._events: list[ParserEvent] = []
        self._finished = False
        self._reset_block()

    def _reset_block(self) -> None:
        self._pending_ws = ""  # whitespace-only run before TAG_OPEN; dropped if the call commits
        self._block_parts: list[str] = []  # text consumed since TAG_OPEN, replayed on rollback
        self._scanner: JsonObjectScanner | None = None
        self._name_parts: list[str] | None = None  # raw JSON string of "name", once started
        self._name: str | None = None
        self._args_parts: list[str] | None = None  # raw arguments text, once started
        self._args_sent = 0  # parts of _args_parts already emitted
        self._index = -1  # the call's index once committed

    # -- public ---------------------------------------------------------------------------------

    def feed(self, text_delta: str) -> list[ParserEvent]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._events = []
        self._buf, self._pos = text_delta, 0
        self._run()
        self._flush_args()
        return self._events

    def finish(self) -> list[ParserEvent]:
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self._events = []
        while self._mode == _OBJECT:
            if self._index >= 0:
                self._end_call()
                self._mode = _DISCARD
            else:
                self._pos = len(self._buf)
                self._fail()  # back to _TEXT; the replayed text may open another block
                self._run()
        if self._mode == _TEXT and self._held:
            tail, self._held = self._held, ""
            if self._run_has_text or tail.strip() or self._num_calls == 0:
                self._emit_text(tail)
        return self._events

    # -- machine --------------------------------------------------------------------------------

    def _run(self) -> None:
        # Every pass consumes text or moves to a mode that will; see each handler.
        while self._pos < len(self._buf):
            if self._mode == _TEXT:
                self._feed_text()
            elif self._mode == _OBJECT:
                self._feed_object()
            elif self._mode == _AFTER_OBJECT:
                self._feed_after_object()
            else:
                self._feed_discard()

    def _feed_text(self) -> None:
        text = self._held + self._buf[self._pos :]
        self._held = ""
        at = text.find(TAG_OPEN)
        if at < 0:
            keep = _partial_suffix_len(text, TAG_OPEN)
            safe, tail = text[: len(text) - keep], text[len(text) - keep :]
            if not self._run_has_text and not safe.strip():
                self._held = safe + tail  # may still turn out to be space before a call
            else:
                self._emit_text(safe)
                self._held = tail
            self._buf, self._pos = "", 0
            return
        before = text[:at]
        if self._run_has_text or before.strip():
            self._emit_text(before)
        else:
            self._pending_ws = before
        self._mode = _OBJECT
        self._scanner = JsonObjectScanner()
        self._buf, self._pos = text, at + len(TAG_OPEN)

    def _feed_object(self) -> None:
        scanner, buf, pos = self._scanner, self._buf, self._pos
        assert scanner is not None, "_OBJECT mode needs a scanner"
        while pos < len(buf):
            new_pos = scanner.advance(buf, pos)
            span = buf[pos:new_pos]
            if self._index < 0 and span:
                self._block_parts.append(span)
            if scanner.status == STATUS_ERROR:
                self._pos = pos
                self._fail()
                return
            pos = new_pos
            if not self._track_member(scanner, span):
                self._pos = pos
                self._fail()
                return
            if self._index < 0 and self._name is not None and self._args_parts is not None:
                self._commit()
            if scanner.status == STATUS_DONE:
                if self._index < 0:
                    if self._name is None:
                        self._pos = pos
                        self._fail()
                        return
                    self._args_parts = ["{}"]
                    self._commit()
                self._end_call()
                self._mode, self._held, self._close_len = _AFTER_OBJECT, "", 0
                break
        self._pos = pos

    def _track_member(self, scanner: JsonObjectScanner, span: str) -> bool:
        """Collect the raw name and arguments; False if the object breaks a rule of the format."""
        key = scanner.member_key
        if key == "name":
            if scanner.value_started:
                if self._name_parts is not None or span[0] != '"':
                    return False
                self._name_parts = []
            if scanner.in_member_value:
                assert self._name_parts is not None, "name value text before its start"
                self._name_parts.append(span)
            if scanner.value_done:
                assert self._name_parts is not None, "name value ended before its start"
                self._name = json.loads("".join(self._name_parts))
                if not self._name:
                    return False
        elif key in _ARGUMENT_KEYS:
            if scanner.value_started:
                if self._args_parts is not None or span[0] != "{":
                    return False
                self._args_parts = []
            if scanner.in_member_value:
                assert self._args_parts is not None, "arguments text before its start"
                self._args_parts.append(span)
        return True

    def _feed_after_object(self) -> None:
        buf, pos = self._buf, self._pos
        while pos < len(buf):
            ch = buf[pos]
            if self._close_len == 0 and ch in JSON_WS:
                self._held += ch
            elif ch == TAG_CLOSE[self._close_len]:
                self._held += ch
                self._close_len += 1
                if self._close_len == len(TAG_CLOSE):
                    self._start_run()
                    self._pos = pos + 1
                    return
            else:  # no close tag: what came after the object is text
                replay = self._held + buf[pos:]
                self._start_run()
                self._buf, self._pos = replay, 0
                return
            pos += 1
        self._pos = pos

    def _feed_discard(self) -> None:
        text = self._held + self._buf[self._pos :]
        self._held = ""
        at = text.find(TAG_CLOSE)
        if at < 0:
            keep = _partial_suffix_len(text, TAG_CLOSE)
            self._held = text[len(text) - keep :]
            self._buf, self._pos = "", 0
            return
        self._start_run()
        self._buf, self._pos = text, at + len(TAG_CLOSE)

    # -- transitions ----------------------------------------------------------------------------

    def _commit(self) -> None:
        assert self._name is not None and self._args_parts is not None, "commit needs both"
        self._index = self._num_calls
        self._num_calls += 1
        self._pending_ws = ""
        self._block_parts = []
        self._events.append(ToolCallStart(self._index, new_call_id(), self._name))
        self._flush_args()

    def _fail(self) -> None:
        """The block broke at ``_pos``: before commit it becomes text, after it the call ends."""
        if self._index < 0:
            replay = "".join(self._block_parts) + self._buf[self._pos :]
            self._emit_text(self._pending_ws + TAG_OPEN)
            self._reset_block()
            self._mode = _TEXT
            self._buf, self._pos = replay, 0
        else:
            self._end_call()
            self._mode, self._held = _DISCARD, ""

    def _end_call(self) -> None:
        assert self._index >= 0 and self._args_parts is not None, "only a committed call ends"
        self._flush_args()
        self._events.append(ToolCallEnd(self._index, "".join(self._args_parts)))
        self._reset_block()

    def _start_run(self) -> None:
        """Back to content after a call: a new run, whose whitespace-only prefix is on hold."""
        self._mode = _TEXT
        self._held, self._close_len = "", 0
        self._run_has_text = False

    def _flush_args(self) -> None:
        if self._index < 0 or self._args_parts is None:
            return
        if self._args_sent < len(self._args_parts):
            delta = "".join(self._args_parts[self._args_sent :])
            self._args_sent = len(self._args_parts)
            if delta:
                self._events.append(ToolCallArgsDelta(self._index, delta))

    def _emit_text(self, text: str) -> None:
        if text:
            self._run_has_text = True
            self._events.append(TextDelta(text))

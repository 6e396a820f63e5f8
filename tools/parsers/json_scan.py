"""Incremental validation of one JSON object (RFC 8259 syntax), tracking its top-level members.

Streaming tool-call parsers need to know, while the model is still writing, where a call's JSON
object ends and which raw characters form the value of a member such as ``"arguments"`` — with
braces and tags inside strings not mistaken for structure. ``json.loads`` answers only once the
text is complete, so this scanner walks the text once, a character (or a run of plain string
characters) at a time, and never looks back.
"""

from __future__ import annotations

import json
import re

JSON_WS = " \t\n\r"

# Scanner states.
_START = 0  # before the object: whitespace, then "{"
_VALUE = 1  # a value must start here (whitespace first)
_OBJ_FIRST = 2  # just after "{": a key or "}"
_OBJ_KEY = 3  # just after ",": a key
_COLON = 4  # after a key: ":"
_AFTER = 5  # after a value inside a container: "," or the closer
_ARR_FIRST = 6  # just after "[": a value or "]"
_STRING = 7
_ESCAPE = 8  # after a backslash in a string
_UNICODE = 9  # inside \uXXXX; ``_hex_left`` digits to go
_NUMBER = 10  # ``_num`` is the number sub-state
_LITERAL = 11  # ``_lit_left`` is the rest of true / false / null
_DONE = 12
_ERROR = 13

# Number sub-states; the "accepting" ones may end the number.
_N_SIGN, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_EXP, _N_EXP_SIGN, _N_EXP_INT = range(8)
_N_ACCEPTING = frozenset((_N_ZERO, _N_INT, _N_FRAC, _N_EXP_INT))
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_ESCAPES = '"\\/bfnrt'
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
# Characters a string may hold verbatim: anything but the quote, the backslash and controls.
_PLAIN_RUN = re.compile(r'[^"\\\x00-\x1f]+')

STATUS_OK = 0  # the consumed text extends a valid prefix of an object
STATUS_DONE = 1  # the object is complete; nothing more is accepted
STATUS_ERROR = 2  # text[pos] cannot continue the object; it was not consumed


class JsonObjectScanner:
    """Validates one JSON object incrementally and reports its top-level members.

    Call ``advance(text, pos)`` repeatedly; it consumes zero or more characters from ``pos``
    (zero only when a number ends just before ``text[pos]``, or on error) and returns the new
    position. After each call the attributes describe the consumed span, which lies entirely
    inside or entirely outside one top-level member's value:

    - ``status``: ``STATUS_OK``, ``STATUS_DONE`` (the closing ``}`` was consumed) or
      ``STATUS_ERROR`` (``text[pos]`` is not valid here and was not consumed). Sticky.
    - ``member_key``: decoded key of the top-level member being read; None before its key closes.
    - ``in_member_value``: the span is part of that member's raw value text.
    - ``value_started``: the span starts that value (its first character is ``text[pos]``).
    - ``value_done``: that value is now complete (numbers complete on a zero-length span).

    Not thread-safe; one scanner per object.
    """

    def __init__(self) -> None:
        self.status = STATUS_OK
        self.member_key: str | None = None
        self.in_member_value = False
        self.value_started = False
        self.value_done = False
        self._state = _START
        self._stack: list[str] = []  # open containers, "{" or "["
        self._string_is_key = False
        self._key_parts: list[str] = []  # raw text of a top-level key being read
        self._in_value = False  # inside a top-level member's value
        self._hex_left = 0
        self._num = _N_SIGN
        self._lit_left = ""

    @property
    def depth(self) -> int:
        """Open containers; 1 means between the outer object's members."""
        return len(self._stack)

    def advance(self, text: str, pos: int) -> int:
        assert self.status == STATUS_OK, "scanner is finished"
        assert pos < len(text), "advance needs a character"
        self.value_started = False
        self.value_done = False
        in_value_before = self._in_value
        if self._state == _STRING:
            match = _PLAIN_RUN.match(text, pos)
            if match is not None:
                if self._string_is_key and len(self._stack) == 1:
                    self._key_parts.append(match.group())
                self.in_member_value = in_value_before
                return match.end()
        ch = text[pos]
        consumed = self._step(ch)
        if self.status == STATUS_ERROR or not consumed:
            self.in_member_value = False
            return pos
        self.in_member_value = in_value_before or self.value_started
        return pos + 1

    def _step(self, ch: str) -> bool:
        """Apply one character; False when it was not consumed (error, or a number ended)."""
        state = self._state
        if state == _STRING:
            if ch == '"':
                self._end_string()
            elif ch == "\\":
                self._state = _ESCAPE
            elif ch < " ":
                return self._fail()
            if self._string_is_key and len(self._stack) == 1:
                self._key_parts.append(ch)
                if self._state == _COLON:
                    self.member_key = json.loads("".join(self._key_parts))
            return True
        if state == _ESCAPE:
            if ch == "u":
                self._state, self._hex_left = _UNICODE, 4
            elif ch in _ESCAPES:
                self._state = _STRING
            else:
                return self._fail()
            self._key_char(ch)
            return True
        if state == _UNICODE:
            if ch not in _HEX:
                return self._fail()
            self._hex_left -= 1
            if self._hex_left == 0:
                self._state = _STRING
            self._key_char(ch)
            return True
        if state == _NUMBER:
            return self._number_char(ch)
        if state == _LITERAL:
            if ch != self._lit_left[0]:
                return self._fail()
            self._lit_left = self._lit_left[1:]
            if not self._lit_left:
                self._value_end()
            return True
        if ch in JSON_WS:
            return True
        if state == _START:
            if ch != "{":
                return self._fail()
            self._stack.append("{")
            self._state = _OBJ_FIRST
            return True
        if state in (_OBJ_FIRST, _OBJ_KEY):
            if ch == '"':
                self._start_string(is_key=True)
                return True
            if ch == "}" and state == _OBJ_FIRST:
                return self._close("{")
            return self._fail()
        if state == _COLON:
            if ch != ":":
                return self._fail()
            self._state = _VALUE
            return True
        if state == _AFTER:
            top = self._stack[-1]
            if ch == ",":
                self._state = _OBJ_KEY if top == "{" else _VALUE
                if top == "{" and len(self._stack) == 1:
                    self.member_key = None
                return True
            if ch == ("}" if top == "{" else "]"):
                return self._close(top)
            return self._fail()
        if state == _ARR_FIRST and ch == "]":
            return self._close("[")
        if state in (_VALUE, _ARR_FIRST):
            return self._start_value(ch)
        return self._fail()  # _DONE accepts nothing

    def _start_value(self, ch: str) -> bool:
        if len(self._stack) == 1:
            self._in_value = True
            self.value_started = True
        if ch == "{":
            self._stack.append("{")
            self._state = _OBJ_FIRST
        elif ch == "[":
            self._stack.append("[")
            self._state = _ARR_FIRST
        elif ch == '"':
            self._start_string(is_key=False)
        elif ch == "-" or ch in _DIGITS:
            self._state = _NUMBER
            self._num = _N_SIGN if ch == "-" else (_N_ZERO if ch == "0" else _N_INT)
        elif ch in _LITERALS:
            self._state, self._lit_left = _LITERAL, _LITERALS[ch]
        else:
            self._in_value = self.value_started = False
            return self._fail()
        return True

    def _number_char(self, ch: str) -> bool:
        num = self._num
        if ch in _DIGITS:
            if num in (_N_SIGN, _N_INT):
                self._num = _N_ZERO if (num == _N_SIGN and ch == "0") else _N_INT
                return True
            if num in (_N_DOT, _N_FRAC):
                self._num = _N_FRAC
                return True
            if num in (_N_EXP, _N_EXP_SIGN, _N_EXP_INT):
                self._num = _N_EXP_INT
                return True
        elif ch == "." and num in (_N_ZERO, _N_INT):
            self._num = _N_DOT
            return True
        elif ch in "eE" and num in (_N_ZERO, _N_INT, _N_FRAC):
            self._num = _N_EXP
            return True
        elif ch in "+-" and num == _N_EXP:
            self._num = _N_EXP_SIGN
            return True
        if num not in _N_ACCEPTING:
            return self._fail()
        # The number ended before ``ch``; the caller hands ``ch`` to the container next.
        self._value_end()
        return False

    def _start_string(self, *, is_key: bool) -> None:
        self._state = _STRING
        self._string_is_key = is_key
        if is_key and len(self._stack) == 1:
            self._key_parts = ['"']

    def _end_string(self) -> None:
        if self._string_is_key:
            self._state = _COLON
        else:
            self._value_end()

    def _key_char(self, ch: str) -> None:
        if self._string_is_key and len(self._stack) == 1:
            self._key_parts.append(ch)

    def _close(self, opener: str) -> bool:
        assert self._stack and self._stack[-1] == opener, "closer must match the open container"
        self._stack.pop()
        self._value_end()
        return True

    def _value_end(self) -> None:
        if not self._stack:
            self._state = _DONE
            self.status = STATUS_DONE
            return
        self._state = _AFTER
        if len(self._stack) == 1 and self._in_value:
            self._in_value = False
            self.value_done = True

    def _fail(self) -> bool:
        self._state = _ERROR
        self.status = STATUS_ERROR
        return False

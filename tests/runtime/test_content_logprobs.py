"""``runtime.logprobs.ContentLogprobs``: which text chunk each streamed token logprob goes with."""

from __future__ import annotations

from engine.outputs import TokenLogprob
from runtime.generation import Finished, LogprobsDelta
from runtime.logprobs import ContentLogprobs
from tools.parsers.base import TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart


def lps(*ids: int) -> LogprobsDelta:
    return LogprobsDelta([TokenLogprob(i, -float(i), []) for i in ids])


def ids(taken) -> list[int] | None:
    return None if taken is None else [lp.token_id for lp in taken]


FINISHED = Finished([], "", [], "stop", 1, 0)


def test_text_takes_what_waits_including_held_back_tokens_and_the_end_takes_the_rest():
    m = ContentLogprobs()
    got = [ids(m.on(0, e)) for e in
           (lps(1), TextDelta("a"), lps(2), lps(3), TextDelta("bc"), lps(4), FINISHED)]
    assert got == [None, [1], None, None, [2, 3], None, [4]]
    assert ids(m.content[0]) == [1, 2, 3, 4]


def test_tool_call_tokens_are_not_content_nor_is_their_closing_markup():
    m = ContentLogprobs()
    events = (lps(1), TextDelta("ok"), lps(2), ToolCallStart(0, "call_x", "f"), lps(3),
              ToolCallArgsDelta(0, "{}"), ToolCallEnd(0, "{}"), lps(4, 5), FINISHED)
    got = [ids(m.on(0, e)) for e in events]
    assert got == [None, [1], None, None, None, None, None, None, []]
    assert ids(m.content[0]) == [1]


def test_choices_are_matched_apart():
    m = ContentLogprobs()
    m.on(0, lps(1))
    m.on(1, lps(2))
    assert ids(m.on(1, TextDelta("x"))) == [2] and ids(m.on(0, TextDelta("y"))) == [1]

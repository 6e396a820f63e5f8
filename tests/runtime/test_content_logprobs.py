"""``runtime.logprobs.ContentLogprobs``: which streamed chunk each token logprob goes with."""

from __future__ import annotations

import pytest

from engine.outputs import TokenLogprob
from runtime.generation import Finished, LogprobsDelta
from runtime.logprobs import ContentLogprobs
from tools.parsers.base import TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart


def lps(*ids: int) -> LogprobsDelta:
    return LogprobsDelta([TokenLogprob(i, -float(i), []) for i in ids])


def ids(taken) -> list[int] | None:
    return None if taken is None else [lp.token_id for lp in taken]


FINISHED = Finished([], "", [], "stop", 1, 0)


@pytest.mark.parametrize("keep_tool_calls", [False, True])
def test_text_takes_what_waits_including_held_back_tokens_and_the_end_takes_the_rest(
        keep_tool_calls):
    m = ContentLogprobs(keep_tool_calls)
    got = [ids(m.on(0, e)) for e in
           (lps(1), TextDelta("a"), lps(2), lps(3), TextDelta("bc"), lps(4), FINISHED)]
    assert got == [None, [1], None, None, [2, 3], None, [4]]
    assert ids(m.content[0]) == [1, 2, 3, 4]


CALL = (lps(1), TextDelta("ok"), lps(2), ToolCallStart(0, "call_x", "f"), lps(3),
        ToolCallArgsDelta(0, "{}"), lps(4), ToolCallEnd(0, "{}"), lps(5), FINISHED)


def test_responses_drop_tool_call_tokens_and_their_closing_markup():
    m = ContentLogprobs(keep_tool_calls=False)
    got = [ids(m.on(0, e)) for e in CALL]
    assert got == [None, [1], None, None, None, None, None, None, None, []]
    assert ids(m.content[0]) == [1]


def test_chat_gives_tool_call_chunks_their_tokens_and_the_end_the_markup():
    m = ContentLogprobs(keep_tool_calls=True)
    got = [ids(m.on(0, e)) for e in CALL]
    assert got == [None, [1], None, [2], None, [3], None, None, None, [4, 5]]
    assert ids(m.content[0]) == [1, 2, 3, 4, 5]  # every output token, as without streaming


def test_choices_are_matched_apart():
    m = ContentLogprobs(keep_tool_calls=True)
    m.on(0, lps(1))
    m.on(1, lps(2))
    assert ids(m.on(1, TextDelta("x"))) == [2] and ids(m.on(0, TextDelta("y"))) == [1]

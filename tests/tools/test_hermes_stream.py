"""The Hermes parser streams the same result whatever the chunking, and that result is right."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.parsers import (
    CallsOnly,
    HermesToolParser,
    ParsedOutput,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    fold_events,
    get_parser,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CALL_ID = re.compile(r"call_[A-Za-z0-9_-]{24}")
OPEN, CLOSE = "<tool_call>", "</tool_call>"

# -- helpers --------------------------------------------------------------------------------------


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


# -- generated outputs ----------------------------------------------------------------------------

SNIPPETS = [
    "}",
    "{",
    "]",
    '"',
    "\\",
    "\\n",
    "</tool_call>",
    "<tool_call>",
    "<tool_",
    "é",
    "😀",
    "\u2028",
    "\x00",
    "\t",
    '{"name": "x", "arguments": {}}',
    ":",
    ",",
]
json_text = st.lists(st.one_of(st.text(max_size=4), st.sampled_from(SNIPPETS)), max_size=5).map(
    "".join
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=False, allow_infinity=False),
    json_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=10,
)
arguments_obj = st.dictionaries(json_text, json_value, max_size=4)
ws = st.text(alphabet=" \n\t\r", max_size=3)
# Content text never holds a whole open tag (that would be a block); partial tags are fine.
content = (
    st.lists(
        st.one_of(
            st.text(max_size=6), st.sampled_from(["<", "<tool", "<tool_call", CLOSE, "\n", " "])
        ),
        max_size=6,
    )
    .map("".join)
    .filter(lambda s: OPEN not in s)
)


@st.composite
def dumps(draw, value) -> str:
    return json.dumps(
        value,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 2])),
        separators=draw(st.sampled_from([None, (",", ":"), (", ", ": "), (" ,", " : ")])),
    )


@st.composite
def tool_block(draw, *, closed: bool) -> tuple[str, str, str]:
    """One block and the (name, arguments) a parser must find in it."""
    name = draw(
        st.text(min_size=1, max_size=12) | st.from_regex(r"[a-z_][a-z0-9_.]{0,15}", fullmatch=True)
    )
    members = [("name", draw(dumps(name)))]
    arguments = "{}"
    if draw(st.integers(0, 9)) > 0:  # arguments are usually present
        arguments = draw(dumps(draw(arguments_obj)))
        members.append((draw(st.sampled_from(["arguments", "arguments", "parameters"])), arguments))
    if draw(st.booleans()):
        members.append(("id", draw(dumps(draw(json_value)))))
    members = draw(st.permutations(members))
    body = ("," + draw(ws)).join(
        f"{draw(ws)}{json.dumps(k)}{draw(ws)}:{draw(ws)}{v}{draw(ws)}" for k, v in members
    )
    block = f"{OPEN}{draw(ws)}{{{body}}}{draw(ws)}{CLOSE if closed else ''}"
    return block, name, arguments


@st.composite
def model_output(draw) -> tuple[str, str, list[tuple[str, str]]]:
    num_calls = draw(st.integers(0, 3))
    before, after = draw(content), draw(content)
    close_last = num_calls == 0 or draw(st.integers(0, 4)) > 0
    if not close_last:
        after = ""  # an unclosed last block ends the output
    parts, expected_text, calls = [before], [], []
    for i in range(num_calls):
        if i:
            gap = draw(ws | content)
            parts.append(gap)
            if gap.strip():
                expected_text.append(gap)
        block, name, arguments = draw(tool_block(closed=close_last or i < num_calls - 1))
        parts.append(block)
        calls.append((name, arguments))
    parts.append(after)
    if num_calls == 0:
        expected_content = before + after
    else:
        expected_content = "".join(
            [before if before.strip() else "", *expected_text, after if after.strip() else ""]
        )
    return "".join(parts), expected_content, calls


@FUZZ
@given(model_output(), st.data())
def test_any_split_reassembles_to_parse(sample, data) -> None:
    text, expected_content, expected_calls = sample
    parsed = HermesToolParser.parse(text)
    assert summary(parsed) == (expected_content, expected_calls)
    for _, arguments in expected_calls:
        assert isinstance(json.loads(arguments), dict)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=24), label="cuts")
    assert_same_any_split(text, cuts)


@FUZZ
@given(model_output(), st.data())
def test_one_char_at_a_time(sample, data) -> None:
    text, _, _ = sample
    assert_same_any_split(text, list(range(len(text))))


# -- malformed and cut-off outputs: both paths must still agree -----------------------------------

SOUP = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "call>",
    "{",
    "}",
    "[",
    "]",
    '"name"',
    '"arguments"',
    '"parameters"',
    ":",
    ",",
    '"',
    "\\",
    " ",
    "\n",
    "x",
    "1",
    "-",
    ".",
    "e",
    "true",
    "nul",
    '"f"',
    '""',
    "<",
    "é",
    '<tool_call>{"name": "f", "arguments": {',
]


@FUZZ
@given(st.lists(st.sampled_from(SOUP), max_size=40).map("".join), st.data())
def test_token_soup_agrees(text, data) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=16), label="cuts")
    assert_same_any_split(text, cuts)


@FUZZ
@given(model_output(), st.data())
def test_damaged_outputs_agree(sample, data) -> None:
    text = sample[0]
    if text:
        at = data.draw(st.integers(0, len(text) - 1), label="at")
        damage = data.draw(st.sampled_from(["cut", "drop", "insert"]), label="damage")
        if damage == "cut":
            text = text[:at]
        elif damage == "drop":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + data.draw(st.sampled_from(SOUP), label="ins") + text[at:]
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=16), label="cuts")
    assert_same_any_split(text, cuts)


# -- examples -------------------------------------------------------------------------------------


def parse_checked(text: str) -> ParsedOutput:
    """``parse``, after checking that one-character streaming gives the same events."""
    assert_same_any_split(text, list(range(len(text))))
    return HermesToolParser.parse(text)


def calls_of(text: str) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in parse_checked(text).tool_calls]


def test_registry_and_call_ids() -> None:
    assert get_parser("hermes") is HermesToolParser
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        get_parser("nope")
    parsed = HermesToolParser.parse('<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert CALL_ID.fullmatch(parsed.tool_calls[0].call_id)


def test_typical_qwen_turn() -> None:
    text = (
        "I'll check both.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>'
    )
    parsed = parse_checked(text)
    assert parsed.content == "I'll check both.\n"
    assert summary(parsed)[1] == [
        ("get_weather", '{"city": "Paris", "unit": "c"}'),
        ("get_time", '{"tz": "Europe/Paris"}'),
    ]


def test_arguments_stream_as_they_form() -> None:
    parser = HermesToolParser()
    events = parser.feed('Hi <tool_call>\n{"name": "f", "arguments": {"q": "ab')
    assert canonical(events) == [
        ("text", None, "Hi "),
        ("start", 0, "f"),
        ("args", 0, '{"q": "ab'),
    ]
    assert canonical(parser.feed('c"}}</tool_call>')) == [
        ("args", 0, 'c"}'),
        ("end", 0, '{"q": "abc"}'),
    ]
    # The number 12 is streamed digit by digit; the end comes with the object's "}".
    parser = HermesToolParser()
    parser.feed('<tool_call>{"name": "f", "arguments": {"n": 1')
    assert canonical(parser.feed("2")) == [("args", 0, "2")]
    assert canonical(parser.feed("}")) == [("args", 0, "}")]
    assert canonical(parser.feed("}")) == [("end", 0, '{"n": 12}')]
    assert parser.feed("\n</tool_call>") == [] and parser.finish() == []


def test_open_tag_split_and_partial_tags_in_text() -> None:
    events = stream('ok <tool_call>{"name": "f", "arguments": {}}</tool_call>', [4, 5, 9, 13])
    assert canonical(events)[0] == ("text", None, "ok ")
    assert parse_checked("a <tool_c").content == "a <tool_c"
    assert parse_checked("a <tool_calls> b").content == "a <tool_calls> b"
    assert parse_checked("x </tool_call> y").content == "x </tool_call> y"
    parser = HermesToolParser()
    assert canonical(parser.feed("a <tool_ca")) == [("text", None, "a ")]
    assert canonical(parser.finish()) == [("text", None, "<tool_ca")]


def test_tags_and_braces_inside_json_strings() -> None:
    args = '{"code": "if (x) { y(); } </tool_call> <tool_call>", "e": "\\"}\\\\"}'
    text = f'<tool_call>{{"name": "run", "arguments": {args}}}</tool_call>tail'
    parsed = parse_checked(text)
    assert summary(parsed) == ("tail", [("run", args)])
    assert json.loads(args)["e"] == '"}\\'


def test_arguments_before_name_are_buffered() -> None:
    parser = HermesToolParser()
    assert parser.feed('<tool_call>{"arguments": {"a": [1, 2]}, ') == []
    events = parser.feed('"name": "late"}</tool_call>')
    assert canonical(events) == [
        ("start", 0, "late"),
        ("args", 0, '{"a": [1, 2]}'),
        ("end", 0, '{"a": [1, 2]}'),
    ]


def test_parameters_alias_extra_members_and_missing_arguments() -> None:
    assert calls_of('<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call>') == [
        ("f", '{"a": 1}')
    ]
    text = '<tool_call>{"id": [1, {"x": "}"}], "name": "f", "arguments": {}, "type": null}'
    assert calls_of(text + "</tool_call>") == [("f", "{}")]
    assert calls_of('<tool_call>{"name": "noargs"}</tool_call>') == [("noargs", "{}")]
    assert calls_of('<tool_call>{"name": "\\u0066n\\n"}</tool_call>') == [("fn\n", "{}")]


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>{'name': 'f', 'arguments': {}}</tool_call>",
        '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
        '<tool_call>{"name": "", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>',
        '<tool_call>{"arguments": {"a": 1}}</tool_call>',
        '<tool_call>{"name": "f" "arguments": {}}</tool_call>',
        '<tool_call>{"arguments": {"a": 1}, "arguments": {}, "name": "f"}</tool_call>',
        '<tool_call>\n{"name": "get_wea',
        "<tool_call>",
    ],
)
def test_malformed_before_commit_is_text(block: str) -> None:
    text = "Sure.\n" + block + "\nbye"
    assert summary(parse_checked(text)) == (text, [])


def test_malformed_block_then_good_block() -> None:
    text = '<tool_call>oops\n<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert summary(parse_checked(text)) == ("<tool_call>oops\n", [("f", "{}")])


def test_error_after_commit_ends_call_and_drops_rest_of_block() -> None:
    text = 'a<tool_call>{"name": "f", "arguments": {"x": True}}\n</tool_call> b'
    assert summary(parse_checked(text)) == ("a b", [("f", '{"x": ')])
    # A forgotten brace: the close tag still ends the block.
    text = '<tool_call>{"name": "f", "arguments": {"x": 1</tool_call>\nnext'
    assert summary(parse_checked(text)) == ("\nnext", [("f", '{"x": 1')])
    # A second "name" after the call committed.
    text = '<tool_call>{"name": "f", "arguments": {}, "name": "g"}</tool_call>'
    assert summary(parse_checked(text)) == ("", [("f", "{}")])
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}, "arguments": {}}</tool_call>'
    assert summary(parse_checked(text)) == ("", [("f", '{"a": 1}')])


def test_cut_off_output() -> None:
    parsed = parse_checked('<tool_call>{"name": "f", "arguments": {"city": "Pa')
    assert summary(parsed) == ("", [("f", '{"city": "Pa')])
    parsed = parse_checked('<tool_call>{"name": "f", "arguments": {}}\n</tool_c')
    assert summary(parsed) == ("", [("f", "{}")])


def test_calls_only_drops_the_markup_of_a_call_cut_before_it_committed() -> None:
    """Under a forced tool_choice the grammar admits only calls: the 135M model's second call,
    cut by max_tokens right after its open tag, is not content (the bare parser says it is)."""
    call = '<tool_call>\n{"name": "f", "arguments": {"city": "Paris"}}\n</tool_call>'
    for tail in ("\n<tool_call>", '\n<tool_call>\n{"na', '\n<tool_call>\n{"name": "f'):
        assert parse_checked(call + tail).content == tail
        for cuts in ([], [5, 40, len(call) + 3]):
            bounds = [0, *cuts, len(call + tail)]
            parser = CallsOnly(HermesToolParser())
            events = []
            for lo, hi in zip(bounds, bounds[1:]):
                events += parser.feed((call + tail)[lo:hi])
            events += parser.finish()
            assert not any(isinstance(e, TextDelta) for e in events), (tail, cuts)
            assert summary(fold_events(events)) == ("", [("f", '{"city": "Paris"}')])


def test_missing_close_tag() -> None:
    assert summary(parse_checked('<tool_call>{"name": "f", "arguments": {}}\n')) == (
        "",
        [("f", "{}")],
    )
    text = '<tool_call>{"name": "f", "arguments": {}}\nDone.'
    assert summary(parse_checked(text)) == ("\nDone.", [("f", "{}")])
    text = '<tool_call>{"name": "f", "arguments": {}}\n</ tool_call>'
    assert summary(parse_checked(text)) == ("\n</ tool_call>", [("f", "{}")])
    text = '<tool_call>{"name": "f", "arguments": {}}<tool_call>{"name": "g", "arguments": {}}'
    assert [n for n, _ in calls_of(text)] == ["f", "g"]


def test_whitespace_around_calls() -> None:
    text = '\n\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\n \n'
    assert summary(parse_checked(text)) == ("", [("f", "{}")])
    assert parse_checked(" \n ").content == " \n "
    text = 'Text.\n\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\n\nMore.'
    assert parse_checked(text).content == "Text.\n\n\n\nMore."


def test_misuse_raises() -> None:
    parser = HermesToolParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")
    with pytest.raises(RuntimeError):
        parser.finish()

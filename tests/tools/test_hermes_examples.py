"""The Hermes parser on hand-written model outputs: typical turns, partial tags, malformed and
cut-off calls; every example also streams one character at a time to the same result."""

from __future__ import annotations

import json

import pytest

from tests.tools.hermes_cases import CALL_ID, assert_same_any_split, canonical, stream, summary
from tools.parsers import (
    CallsOnly,
    HermesToolParser,
    ParsedOutput,
    TextDelta,
    fold_events,
    get_parser,
)


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

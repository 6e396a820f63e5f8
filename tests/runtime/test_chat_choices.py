"""Chat Completions with ``n`` choices, through the real ``openai`` client against the running
server: each choice is its own generation (seed + index when seeded), with its own tool-call
parser, streamed interleaved by ``index``; the prompt counts once in ``usage``."""

from __future__ import annotations

import json

import jsonschema

from tests.runtime.test_chat_params import ASK_WEATHER, MODEL, TOOLS, WEATHER

POEM = [{"role": "user", "content": "Write a short poem about the sea."}]


def test_seeded_choices_are_the_single_requests_of_seed_plus_index(client):
    many = client.chat.completions.create(model=MODEL, messages=POEM, temperature=1.0, seed=7,
                                          max_tokens=12, n=3)
    singles = [client.chat.completions.create(model=MODEL, messages=POEM, temperature=1.0,
                                              seed=7 + i, max_tokens=12) for i in range(3)]
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.message.content for c in many.choices] == \
        [s.choices[0].message.content for s in singles]
    assert len({c.message.content for c in many.choices}) > 1  # the seeds differ
    assert many.usage.prompt_tokens == singles[0].usage.prompt_tokens  # counted once
    assert many.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    assert many.usage.total_tokens == many.usage.prompt_tokens + many.usage.completion_tokens


def test_streamed_choices_interleave_by_index_and_match_the_json_answer(client):
    body = dict(model=MODEL, messages=POEM, temperature=1.0, seed=11, max_tokens=10, n=2)
    whole = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(stream=True,
                                                 stream_options={"include_usage": True}, **body))
    text, roles, finishes = {0: "", 1: ""}, [], []
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        text[choice.index] += choice.delta.content or ""
        roles += [choice.index] if choice.delta.role else []
        finishes += [(choice.index, choice.finish_reason)] if choice.finish_reason else []
    assert sorted(roles) == [0, 1]
    assert sorted(finishes) == [(0, whole.choices[0].finish_reason),
                                (1, whole.choices[1].finish_reason)]
    assert [text[0], text[1]] == [c.message.content for c in whole.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_every_choice_parses_its_own_tool_calls(client):
    """Greedy: the choices are the same call; a parser shared between them would mix or drop
    their markup."""
    for stream in (False, True):
        body = dict(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                    parallel_tool_calls=False, temperature=0, max_tokens=60, n=2)
        if not stream:
            out = client.chat.completions.create(**body)
            calls = {c.index: [(t.function.name, t.function.arguments)
                               for t in c.message.tool_calls] for c in out.choices}
            finish = {c.index: c.finish_reason for c in out.choices}
        else:
            calls, finish = {0: {}, 1: {}}, {}
            for chunk in client.chat.completions.create(stream=True, **body):
                (choice,) = chunk.choices
                for delta in choice.delta.tool_calls or []:
                    name, args = calls[choice.index].get(delta.index, ("", ""))
                    calls[choice.index][delta.index] = (
                        name + (delta.function.name or ""), args + (delta.function.arguments or ""))
                if choice.finish_reason:
                    finish[choice.index] = choice.finish_reason
            calls = {i: [c[k] for k in sorted(c)] for i, c in calls.items()}
        assert finish == {0: "tool_calls", 1: "tool_calls"}, stream
        assert calls[0] == calls[1] and len(calls[0]) == 1, stream
        name, arguments = calls[0][0]
        assert name == "get_weather"
        jsonschema.validate(json.loads(arguments), WEATHER)

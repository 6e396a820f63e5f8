"""Token logprobs streamed with the text they produced, in Chat Completions, Completions and
Responses (HTTP, SSE): each chunk carries its own tokens' logprobs, and all of them together
are what the non-streamed answer reports (the same tokens; the values to float noise: the
second request reuses the first one's cached prompt KV). Chat reports tool-call tokens too;
Responses only output text's."""

from __future__ import annotations

import pytest

from tests.runtime.test_chat_params import ASK_WEATHER, MODEL, TOOLS
from tests.runtime.test_responses_http import post, sse

POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
GREEDY = dict(model=MODEL, temperature=0, max_tokens=10, extra_body={"ignore_eos": True})


def test_chat_chunks_carry_their_tokens_logprobs(client):
    whole = client.chat.completions.create(messages=POEM, logprobs=True, top_logprobs=2,
                                           **GREEDY)
    expected = [(lp.token, lp.logprob, [a.token for a in lp.top_logprobs])
                for lp in whole.choices[0].logprobs.content]
    assert len(expected) == whole.usage.completion_tokens == 10
    streamed, chunks_with_logprobs = [], 0
    for chunk in client.chat.completions.create(messages=POEM, logprobs=True, top_logprobs=2,
                                                stream=True, **GREEDY):
        choice = chunk.choices[0]
        content = choice.logprobs.content if choice.logprobs else []
        chunks_with_logprobs += bool(content)
        streamed += [(lp.token, lp.logprob, [a.token for a in lp.top_logprobs])
                     for lp in content]
        if choice.delta.content and content:  # this chunk's text is its tokens' text
            assert "".join(lp.token for lp in content).endswith(choice.delta.content)
    assert [(t, top) for t, _, top in streamed] == [(t, top) for t, _, top in expected]
    assert [v for _, v, _ in streamed] == pytest.approx([v for _, v, _ in expected], abs=1e-3)
    assert chunks_with_logprobs > 1  # streamed along, not all at the end


def test_chat_tool_call_chunks_carry_their_tokens_logprobs(client):
    """Chat reports every output token (markup included, as without streaming): the call's
    chunks carry theirs, and together they are the non-streamed answer's."""
    body = dict(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                parallel_tool_calls=False, temperature=0, max_tokens=60, logprobs=True)
    whole = client.chat.completions.create(**body)
    assert whole.choices[0].message.tool_calls
    expected = [lp.token for lp in whole.choices[0].logprobs.content]
    assert len(expected) == whole.usage.completion_tokens
    streamed, call_chunks_with_logprobs = [], 0
    for chunk in client.chat.completions.create(stream=True, **body):
        choice = chunk.choices[0]
        content = choice.logprobs.content if choice.logprobs else []
        call_chunks_with_logprobs += bool(choice.delta.tool_calls and content)
        streamed += [lp.token for lp in content]
    assert streamed == expected and "".join(expected).startswith("<tool_call>")
    assert call_chunks_with_logprobs > 1


def test_completion_chunks_continue_offsets_and_match_the_whole(client):
    body = dict(prompt="The three most useful tools for a gardener are", logprobs=2, **GREEDY)
    whole = client.completions.create(**body).choices[0].logprobs
    tokens, values, offsets, tops, with_logprobs = [], [], [], [], 0
    for chunk in client.completions.create(stream=True, **body):
        lp = chunk.choices[0].logprobs
        if lp is None or not lp.tokens:
            continue
        with_logprobs += 1
        tokens += lp.tokens
        values += lp.token_logprobs
        offsets += lp.text_offset
        tops += lp.top_logprobs
    assert (tokens, offsets) == (whole.tokens, whole.text_offset)
    assert values == pytest.approx(whole.token_logprobs, abs=1e-3)
    assert [sorted(top) for top in tops] == [sorted(top) for top in whole.top_logprobs]
    assert with_logprobs > 1


@pytest.mark.parametrize("ask", [{"top_logprobs": 2},
                                 {"include": ["message.output_text.logprobs"]}],
                         ids=["top_logprobs", "include"])
def test_responses_text_reports_logprobs_when_asked(server, ask):
    body = dict(input="Write a short poem about the sea.", max_output_tokens=10,
                temperature=0, ignore_eos=True)
    whole = post(server, model=MODEL, **body, **ask).json()
    part = whole["output"][0]["content"][0]
    assert len(part["logprobs"]) == whole["usage"]["output_tokens"] == 10
    alternatives = 2 if "top_logprobs" in ask else 0
    for lp in part["logprobs"]:
        assert lp["logprob"] <= 0 and lp["bytes"] == list(lp["token"].encode())
        assert len(lp["top_logprobs"]) == alternatives
    events = sse(server, **body, **ask)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    streamed = [lp for e in deltas for lp in e["logprobs"]]
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert sum(bool(e["logprobs"]) for e in deltas) > 1
    assert streamed == done["logprobs"]
    assert [lp["token"] for lp in streamed] == [lp["token"] for lp in part["logprobs"]]
    assert [lp["logprob"] for lp in streamed] == \
        pytest.approx([lp["logprob"] for lp in part["logprobs"]], abs=1e-3)
    final = events[-1]["response"]["output"][0]["content"][0]
    assert final["logprobs"] == [{**lp, "top_logprobs": [
        {**a, "bytes": list(a["token"].encode())} for a in lp["top_logprobs"]],
        "bytes": list(lp["token"].encode())} for lp in done["logprobs"]]


def test_responses_without_asking_report_no_logprobs(server):
    out = post(server, model=MODEL, input="Say hi.", max_output_tokens=4, temperature=0).json()
    assert out["output"][0]["content"][0]["logprobs"] == []

"""Speculative decoding through the server (suffix drafter), with the real ``openai`` client.

The ``speculative`` extension field is validated with 400s naming it, switches speculation per
request (seen in ``/metrics``), and caps the drafts. With several tokens accepted per step,
streamed outputs equal the same request without speculation — content, tool calls, finish
reason and billed tokens — wherever a stop string, ``max_tokens`` or EOS lands, inside a tool
call included (a property test over stops and limits drawn from the real outputs).
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai.lib.responses_websocket import ResponsesWebSocketLimits, ResponsesWebSocketSession

from tests.runtime.server import ServerProcess

MODEL = "SmolLM2-135M-Instruct"
ARGS = '{"path": "src/app.py", "lines": [1, 40]}'
CALL = f'<tool_call>\n{{"name": "read_file", "arguments": {ARGS}}}\n</tool_call>'
TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file.",
    "parameters": {"type": "object", "properties": {
        "path": {"type": "string"}, "lines": {"type": "array", "items": {"type": "integer"}}}}}}]
# Greedy outputs of the default model (checked by the baselines fixture): text then a tool call,
# a tool call alone, and long text echoing the prompt (max_tokens ends it).
CONVERSATIONS = {
    "text_then_call": [
        {"role": "user", "content": "Read src/app.py."},
        {"role": "assistant", "content": "Reading the file now.\n" + CALL},
        {"role": "user", "content": "That failed. Write exactly the same message again: the "
                                    "sentence, then the same tool call block."}],
    "call": [
        {"role": "user", "content": "Read src/app.py."},
        {"role": "assistant", "content": CALL},
        {"role": "user", "content": "Copy your previous message exactly."}],
    "long_text": [
        {"role": "system", "content": "You call tools by writing <tool_call> blocks with JSON, "
                                      "like: " + CALL},
        {"role": "user", "content": "Read src/app.py, lines 1 to 40."}],
}
MAX_TOKENS = 64
LIMITS = ResponsesWebSocketLimits(max_lanes=2, max_events_per_lane=4096, max_events=8192,
                                  max_bytes_per_lane=1 << 24, max_bytes=1 << 25)


@pytest.fixture(scope="module")
def spec_server(default_model_path):
    proc = ServerProcess("--num-pages", "512", "--max-model-len", "2048",
                         "--speculative-drafter", "suffix", "--num-speculative-tokens", "6")
    yield proc.wait_ready()
    proc.stop()


@pytest.fixture(scope="module")
def client(spec_server) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=spec_server.base_url + "/v1", max_retries=0,
                         timeout=120)


def spec_metrics(server) -> dict[str, float]:
    text = httpx.get(server.base_url + "/metrics").text
    found = re.findall(r'^agentspeed_spec_(verify_steps|draft_tokens\{outcome="(\w+)"\}) (\S+)$',
                       text, re.M)
    return {outcome or "steps": float(value) for _, outcome, value in found}


def measured(server, run):
    """``run()``'s result, and how the server's speculation counters moved meanwhile."""
    before = spec_metrics(server)
    result = run()
    after = spec_metrics(server)
    return result, {k: after[k] - before[k] for k in ("steps", "drafted", "accepted")}


def chat(client, name: str, speculative=None, **kw):
    """(content, [(name, arguments)], finish_reason, completion_tokens), not streamed."""
    extra = {"speculative": speculative} if speculative is not None else None
    r = client.chat.completions.create(model=MODEL, messages=CONVERSATIONS[name], tools=TOOLS,
                                       temperature=0, extra_body=extra, **kw)
    message = r.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    return message.content or "", calls, r.choices[0].finish_reason, r.usage.completion_tokens


def chat_stream(client, name: str, speculative, **kw):
    """The same tuple, reassembled from the stream's deltas."""
    stream = client.chat.completions.create(
        model=MODEL, messages=CONVERSATIONS[name], tools=TOOLS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"speculative": speculative}, **kw)
    content, calls, finish, usage = [], {}, None, None
    for chunk in stream:
        usage = chunk.usage.completion_tokens if chunk.usage else usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                name_args = calls.setdefault(delta.index, [delta.function.name, ""])
                name_args[1] += delta.function.arguments or ""
    return "".join(content), [tuple(calls[i]) for i in sorted(calls)], finish, usage


@pytest.fixture(scope="module")
def baselines(client) -> dict[str, str]:
    """Each conversation's greedy output text without speculation (markup included)."""
    texts = {}
    for name in CONVERSATIONS:
        r = client.chat.completions.create(
            model=MODEL, messages=CONVERSATIONS[name], tools=TOOLS, temperature=0,
            max_tokens=MAX_TOKENS, logprobs=True, extra_body={"speculative": {"enabled": False}})
        texts[name] = "".join(t.token for t in r.choices[0].logprobs.content)
    assert CALL in texts["text_then_call"] and not texts["text_then_call"].startswith("<")
    assert texts["call"].startswith(CALL)
    assert CALL not in texts["long_text"] and len(texts["long_text"]) > 150
    return texts


# ------------------------------------------------------------------------ the extension field
BAD_FIELDS = [({"num_draft_tokens": 17}, "speculative.num_draft_tokens"),
              ({"num_draft_tokens": -1}, "speculative.num_draft_tokens"),
              ({"enabled": "yes"}, "speculative.enabled"),
              ({"drafts": 3}, "speculative"),
              (True, "speculative")]


@pytest.mark.parametrize(("field", "param"), BAD_FIELDS)
def test_bad_speculative_field_is_a_400_naming_it(client, field, param):
    with pytest.raises(openai.BadRequestError) as chat_err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2, extra_body={"speculative": field})
    with pytest.raises(openai.BadRequestError) as responses_err:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=2,
                                extra_body={"speculative": field})
    for err in (chat_err.value, responses_err.value):
        assert err.body["param"] == param and err.body["type"] == "invalid_request_error"


def test_per_request_switch_and_draft_cap(client, spec_server, baselines):
    run = lambda spec: measured(spec_server, lambda: chat(client, "call", spec))  # noqa: E731
    off, moved = run({"enabled": False})
    assert moved["drafted"] == 0 and off[1] == [("read_file", ARGS)]
    none, moved = run({"num_draft_tokens": 0})
    assert moved["drafted"] == 0 and none == off
    capped, moved = run({"enabled": True, "num_draft_tokens": 2})
    assert capped == off and moved["accepted"] > 0
    assert 0 < moved["drafted"] <= 2 * moved["steps"], moved
    default, moved = run(None)  # the server's setting: up to 6 drafts, with back-off
    assert default == off and moved["drafted"] > 2 * moved["steps"], moved


def test_forced_tool_call_speculates_under_its_grammar(client, spec_server):
    forced = {"tool_choice": {"type": "function", "function": {"name": "read_file"}}}
    plain = chat(client, "call", {"enabled": False}, **forced)
    assert plain[1] == [("read_file", ARGS)] and plain[2] == "tool_calls"
    streamed, moved = measured(spec_server, lambda: chat_stream(client, "call", {"enabled": True},
                                                                **forced))
    assert streamed == plain and moved["accepted"] > 0, moved


def test_responses_http_and_websocket_switch(client, spec_server):
    items = CONVERSATIONS["call"]

    def http(spec):
        r = client.responses.create(model=MODEL, input=items, tools=[TOOLS[0]["function"] | {
            "type": "function"}], temperature=0, extra_body={"speculative": spec})
        return [(o.type, getattr(o, "name", None), getattr(o, "arguments", None))
                for o in r.output]

    off, moved = measured(spec_server, lambda: http({"enabled": False}))
    assert moved["drafted"] == 0 and ("function_call", "read_file", ARGS) in off
    on, moved = measured(spec_server, lambda: http({"enabled": True}))
    assert on == off and moved["accepted"] > 0

    def websocket():
        with client.responses.connect() as conn, \
                ResponsesWebSocketSession(conn, limits=LIMITS) as session:
            session.default.send({"type": "response.create", "model": MODEL, "input": items,
                                  "tools": [TOOLS[0]["function"] | {"type": "function"}],
                                  "temperature": 0, "speculative": {"enabled": True}})
            events = []
            while not events or events[-1].type not in ("response.completed", "error"):
                events.append(session.default.recv(timeout=120))
        return events

    events, moved = measured(spec_server, websocket)
    assert events[-1].type == "response.completed" and moved["accepted"] > 0
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    final = [(o.type, getattr(o, "name", None), getattr(o, "arguments", None))
             for o in events[-1].response.output]
    assert final == off and deltas == ARGS


# ------------------------------------------------------------------- streams with speculation
STOPS = ['"lines"', "</tool_call>", "src/", "now.", "<tool_call>"]


@settings(max_examples=3, deadline=None, derandomize=True)  # each example is two generations
@given(case=st.tuples(
    st.sampled_from(sorted(CONVERSATIONS)),
    st.none() | st.sampled_from(STOPS) | st.tuples(st.floats(0, 1), st.integers(1, 6)),
    st.none() | st.integers(1, MAX_TOKENS),
    st.integers(1, 6)))
@example(case=("text_then_call", '"lines"', None, 6))  # a stop inside the call's arguments
@example(case=("call", None, 20, 4))  # max_tokens inside the call
@example(case=("text_then_call", None, None, 5))  # text, a whole call, then EOS
@example(case=("long_text", (0.5, 4), 40, 3))  # a stop in copied text, else max_tokens
def test_speculative_stream_equals_plain_output(client, spec_server, baselines, case):
    name, stop, max_tokens, k = case
    if isinstance(stop, tuple):  # a slice of the real output, so the stop often lands
        text = baselines[name]
        at = int(stop[0] * (len(text) - 1))
        stop = text[at : at + stop[1]]
    kw = {"max_tokens": max_tokens or MAX_TOKENS, **({"stop": [stop]} if stop else {})}
    plain = chat(client, name, {"enabled": False}, **kw)
    streamed, moved = measured(spec_server, lambda: chat_stream(
        client, name, {"enabled": True, "num_draft_tokens": k}, **kw))
    assert streamed == plain, (case, stop)
    if plain[3] >= 8:  # copied text: some step must have taken several tokens
        assert moved["accepted"] > 0, (case, stop, moved)

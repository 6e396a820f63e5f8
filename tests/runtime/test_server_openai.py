"""The real ``openai`` client against ``agentspeed serve`` running as a subprocess."""

from __future__ import annotations

import re

import httpx
import pytest
from openai.lib.responses_websocket import ResponsesWebSocketLimits, ResponsesWebSocketSession

from tests.runtime.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "SmolLM2-135M-Instruct"
LIMITS = ResponsesWebSocketLimits(max_lanes=4, max_events_per_lane=4096, max_events=8192,
                                  max_bytes_per_lane=1 << 24, max_bytes=1 << 25)


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct"]
    models = httpx.get(server.base_url + "/v1/models", headers=AUTH).json()
    assert models["object"] == "list" and [set(m) for m in models["data"]] == [
        {"id", "object", "created", "owned_by", "max_model_len"}]
    assert models["data"][0]["object"] == "model" and models["data"][0]["max_model_len"] == 4096
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}  # no key needed
    text = httpx.get(server.base_url + "/metrics", headers=AUTH).text
    assert "agentspeed_kv_pages" in text and "agentspeed_time_to_first_token_seconds" in text
    # On CPU every op takes its torch path: the engine builds no Triton kernel.
    assert metric_values(server)["agentspeed_kernel_builds"] == 0


def metric_values(server) -> dict[str, float]:
    """Every unlabelled sample of /metrics, by name."""
    text = httpx.get(server.base_url + "/metrics", headers=AUTH).text
    return {name: float(value) for name, value in
            re.findall(r"^(agentspeed_\w+) (\S+)$", text, re.M)}


def moved(server, run):
    """``run()``'s usage as (prompt, cached, generated) tokens, and how the token counters and
    the latency histograms' counts moved meanwhile."""
    names = ("agentspeed_prompt_tokens_total", "agentspeed_cached_prompt_tokens_total",
             "agentspeed_generated_tokens_total",
             "agentspeed_time_to_first_token_seconds_count",
             "agentspeed_inter_token_latency_seconds_count")
    before = metric_values(server)
    usage = run()
    after = metric_values(server)
    return usage, tuple(after[n] - before[n] for n in names)


@pytest.mark.parametrize("kind", ["chat", "chat_stream", "responses", "responses_stream"])
def test_every_endpoint_updates_token_and_latency_metrics(server, client, kind):
    messages = [{"role": "user", "content": f"Name a {kind.replace('_', ' ')} colour."}]

    def run():
        if kind == "chat":
            out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                                 temperature=0)
            u = out.usage
            return u.prompt_tokens, u.prompt_tokens_details.cached_tokens, u.completion_tokens
        if kind == "chat_stream":
            chunks = list(client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=8, temperature=0, stream=True,
                stream_options={"include_usage": True}))
            u = chunks[-1].usage
            return u.prompt_tokens, u.prompt_tokens_details.cached_tokens, u.completion_tokens
        if kind == "responses":
            out = client.responses.create(model=MODEL, input=messages, max_output_tokens=8,
                                          temperature=0)
        else:
            events = list(client.responses.create(model=MODEL, input=messages, stream=True,
                                                  max_output_tokens=8, temperature=0))
            out = events[-1].response  # completed or incomplete
        u = out.usage
        return u.input_tokens, u.input_tokens_details.cached_tokens, u.output_tokens

    (prompt, cached, generated), deltas = moved(server, run)
    assert generated >= 2, "too short to time the tokens after the first"
    assert deltas == (prompt, cached, generated, 1, 1)


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens > 0
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    full = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16, temperature=0)
    assert full.choices[0].message.content == text
    # The same prompt again is served from the prefix cache.
    assert full.usage.prompt_tokens_details.cached_tokens >= full.usage.prompt_tokens - 16


def test_responses_sse_stream(client):
    with client.responses.stream(model="SmolLM2-135M-Instruct", input="Name one colour.",
                                 max_output_tokens=64, temperature=0) as stream:
        kinds = [event.type for event in stream]
        assert kinds[-1] == "response.completed", kinds
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds and final.output_text
    fetched = client.responses.retrieve(final.id)
    assert fetched.id == final.id and fetched.output_text == final.output_text
    client.responses.delete(final.id)


def test_websocket_chained_turns_reuse_cache(client):
    with client.responses.connect() as conn, \
            ResponsesWebSocketSession(conn, limits=LIMITS) as session:
        lane = session.default
        lane.send({"type": "response.create", "model": "SmolLM2-135M-Instruct",
                   "instructions": "You are terse.", "input": "What is 3 + 4?",
                   "max_output_tokens": 24, "temperature": 0})
        first = lane.get_final_response(timeout=120)
        lane.send({"type": "response.create", "previous_response_id": first.id,
                   "input": "And 5 + 6?", "max_output_tokens": 24, "temperature": 0})
        second = lane.get_final_response(timeout=120)
    turn1 = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens > turn1
    # Everything the model saw or wrote in turn 1 is reused, to the page.
    assert second.usage.input_tokens_details.cached_tokens >= turn1 - 16


def test_websocket_two_lanes_at_once(client):
    with client.responses.connect() as conn, \
            ResponsesWebSocketSession(conn, limits=LIMITS) as session:
        a, b = session.lane("a"), session.lane("b")
        a.send({"type": "response.create", "input": "Count to five.", "max_output_tokens": 20,
                "temperature": 0})
        b.send({"type": "response.create", "input": "Name two fruits.",
                "max_output_tokens": 20, "temperature": 0})
        ra, rb = a.get_final_response(timeout=120), b.get_final_response(timeout=120)
    assert ra.id != rb.id and ra.output_text and rb.output_text


def test_generate_false_prepares_a_chain(client):
    with client.responses.connect() as conn, \
            ResponsesWebSocketSession(conn, limits=LIMITS) as session:
        lane = session.default
        lane.send({"type": "response.create", "instructions": "You answer in French.",
                   "input": [], "generate": False})
        prep = lane.get_final_response(timeout=120)
        assert prep.output == [] and prep.usage.output_tokens == 0
        lane.send({"type": "response.create", "previous_response_id": prep.id,
                   "input": "Hello!", "max_output_tokens": 8, "temperature": 0})
        turn = lane.get_final_response(timeout=120)
    assert turn.usage.input_tokens_details.cached_tokens >= prep.usage.input_tokens - 16


def test_short_prompt_arriving_mid_decode_runs_first(server, client):
    """A prompt that arrives while another request decodes runs in a step of its own (the
    default ``--prefill-first-tokens``), counted by ``agentspeed_prefill_first_steps``; both
    requests still get every token they asked for."""
    before = metric_values(server)["agentspeed_prefill_first_steps"]
    long_run = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about rivers."}],
        max_tokens=96, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    chunks = iter(long_run)
    first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
    short = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
        temperature=0, extra_body={"ignore_eos": True})
    rest = list(chunks)
    assert first.choices[0].delta.content and short.usage.completion_tokens == 4
    assert rest[-1].usage.completion_tokens == 96
    assert metric_values(server)["agentspeed_prefill_first_steps"] >= before + 1

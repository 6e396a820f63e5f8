"""The real ``openai`` client against ``agentspeed serve`` running as a subprocess."""

from __future__ import annotations

import httpx
from openai.lib.responses_websocket import ResponsesWebSocketLimits, ResponsesWebSocketSession

LIMITS = ResponsesWebSocketLimits(max_lanes=4, max_events_per_lane=4096, max_events=8192,
                                  max_bytes_per_lane=1 << 24, max_bytes=1 << 25)


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct"]
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.base_url + "/metrics").text
    assert "agentspeed_kv_pages" in text and "agentspeed_time_to_first_token_seconds" in text


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

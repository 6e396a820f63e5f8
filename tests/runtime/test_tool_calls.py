"""Forced tool calls through the real ``openai`` client: streamed over Chat Completions, and a
``function_call`` → ``function_call_output`` round trip over the Responses WebSocket.

Both wait on constrained decoding: only a grammar makes the 135M model honour a named
``tool_choice``.
"""

from __future__ import annotations

import json

from openai.lib.responses_websocket import ResponsesWebSocketLimits, ResponsesWebSocketSession

MODEL = "SmolLM2-135M-Instruct"
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
LIMITS = ResponsesWebSocketLimits(max_lanes=4, max_events_per_lane=4096, max_events=8192,
                                  max_bytes_per_lane=1 << 24, max_bytes=1 << 25)


def test_chat_stream_forced_tool_call(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[{"type": "function", "function": {
            "name": "get_weather", "description": "The current weather in a city.",
            "parameters": PARAMETERS}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    calls: dict[int, dict] = {}  # tool-call index -> id, name, argument fragments
    content, finish = [], []
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content.append(choice.delta.content or "")
        if choice.finish_reason:
            finish.append(choice.finish_reason)
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:  # the first delta of a call names it
                assert delta.id and delta.type == "function" and delta.function.name
                calls[delta.index] = {"id": delta.id, "name": delta.function.name,
                                      "fragments": []}
            else:
                assert delta.id is None and not delta.function.name
            calls[delta.index]["fragments"].append(delta.function.arguments or "")
    assert list(calls) == [0]
    call = calls[0]
    assert call["name"] == "get_weather"
    arguments = json.loads("".join(call["fragments"]))
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert sum(bool(f) for f in call["fragments"]) >= 2  # the arguments streamed as they formed
    assert "".join(content).strip() == ""  # a named tool_choice leaves no room for text
    assert finish == ["tool_calls"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def run_turn(lane, **create) -> tuple[list, object]:
    """Send one ``response.create`` on ``lane``; its events and the final ``Response``."""
    lane.send({"type": "response.create", "model": MODEL, "temperature": 0, **create})
    events = []
    while not events or events[-1].type not in TERMINAL + ("error",):
        events.append(lane.recv(timeout=300))
    assert events[-1].type != "error", events[-1]
    return events, events[-1].response


def test_ws_function_call_round_trip(client):
    tool = {"type": "function", "name": "get_weather", "parameters": PARAMETERS, "strict": True,
            "description": "The current weather in a city."}
    with client.responses.connect() as conn, \
            ResponsesWebSocketSession(conn, limits=LIMITS) as session:
        lane = session.default
        events, first = run_turn(
            lane, instructions="You answer questions about the weather.", tools=[tool],
            tool_choice={"type": "function", "name": "get_weather"},
            input="What is the weather in Paris?", max_output_tokens=64)
        assert first.status == "completed", first
        assert [item.type for item in first.output] == ["function_call"]
        call = first.output[0]
        assert call.name == "get_weather" and call.call_id and call.status == "completed"
        assert set(json.loads(call.arguments)) == {"city"}
        streamed = "".join(e.delta for e in events
                           if e.type == "response.function_call_arguments.delta")
        assert streamed == call.arguments
        # Only the new item goes up; the server continues from turn 1's exact tokens.
        _, second = run_turn(
            lane, previous_response_id=first.id, max_output_tokens=24,
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": json.dumps({"city": "Paris", "sky": "sunny", "celsius": 21})}])
    assert second.status in ("completed", "incomplete"), second
    turn1 = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens > turn1
    assert second.usage.input_tokens_details.cached_tokens >= turn1 - 16

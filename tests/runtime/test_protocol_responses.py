"""Responses API wire types, stream events and WebSocket mode against the real ``openai`` client:
request bodies it sends, SSE streams it consumes, and a live ``client.responses.connect()``
session with lanes talking to a tiny WebSocket server that speaks our events.
"""

from __future__ import annotations

import json
import threading
import typing

import openai
import pytest
from openai.lib.responses_websocket import (
    ResponsesWebSocketError,
    ResponsesWebSocketLimits,
    ResponsesWebSocketSession,
)
from openai.types.responses import Response as OAIResponse
from openai.types.responses import ResponseStreamEvent as OAIStreamEvent
from openai.types.responses.responses_server_event import ResponsesServerEvent as OAIServerEvent
from pydantic import TypeAdapter
from websockets.sync.server import ServerConnection, serve

from runtime.protocol import response_events as ev
from runtime.protocol import responses as rs
from runtime.protocol.codec import decode_request, encode_json
from runtime.protocol.errors import APIError, previous_response_not_found, server_error
from runtime.protocol.websocket import decode_client_event, lane_of, ws_error_event
from tests.runtime.openai_client import assert_client_keeps, fake_client

# OpenAI's API sends Response.store, but the client's Response model has no such field.
RESPONSE_EXTRAS = frozenset({"store"})
SSE_ADAPTER = TypeAdapter(OAIStreamEvent)
WS_ADAPTER = TypeAdapter(OAIServerEvent)

TOOL = {"type": "function", "name": "get_weather", "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True}


def request() -> rs.ResponseCreateRequest:
    return rs.ResponseCreateRequest(model="m", instructions="Be brief.", input="Weather?",
                                    tools=[rs.FunctionTool(name="get_weather")])


def turn_events(response_id: str, stream_id: str | None = None) -> list[ev.StreamEvent]:
    """A text part then a function call, as the server streams them, numbered from 0."""
    start = rs.Response.start(request(), response_id=response_id, model="m", created_at=100)
    msg_id, fc_id = f"msg_{response_id}", f"fc_{response_id}"
    text = rs.OutputText(text="Hello")
    message = rs.OutputMessage(id=msg_id, status="completed", content=[text])
    call = rs.FunctionCall(id=fc_id, call_id="call_1", name="get_weather",
                           arguments='{"city":"Oslo"}', status="completed")
    done = rs.Response.start(request(), response_id=response_id, model="m", created_at=100)
    done.status, done.output, done.completed_at = "completed", [message, call], 101
    done.usage = rs.ResponseUsage.of(input_tokens=40, output_tokens=12, cached_tokens=32)
    lp = ev.TokenLogprob(token="Hel", logprob=-0.1,
                         top_logprobs=[ev.TopTokenLogprob(token="Hel", logprob=-0.1)])
    where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    events: list[ev.StreamEvent] = [
        ev.ResponseCreated(sequence_number=0, response=start),
        ev.ResponseInProgress(sequence_number=0, response=start),
        ev.OutputItemAdded(sequence_number=0, output_index=0, item=rs.OutputMessage(
            id=msg_id, status="in_progress")),
        ev.ContentPartAdded(sequence_number=0, **where, part=rs.OutputText(text="")),
        ev.OutputTextDelta(sequence_number=0, **where, delta="Hel", logprobs=[lp]),
        ev.OutputTextDelta(sequence_number=0, **where, delta="lo"),
        ev.OutputTextDone(sequence_number=0, **where, text="Hello"),
        ev.ContentPartDone(sequence_number=0, **where, part=text),
        ev.OutputItemDone(sequence_number=0, output_index=0, item=message),
        ev.OutputItemAdded(sequence_number=0, output_index=1, item=rs.FunctionCall(
            id=fc_id, call_id="call_1", name="get_weather", arguments="", status="in_progress")),
        ev.FunctionCallArgumentsDelta(sequence_number=0, item_id=fc_id, output_index=1,
                                      delta='{"city":'),
        ev.FunctionCallArgumentsDelta(sequence_number=0, item_id=fc_id, output_index=1,
                                      delta='"Oslo"}'),
        ev.FunctionCallArgumentsDone(sequence_number=0, item_id=fc_id, output_index=1,
                                     arguments='{"city":"Oslo"}'),
        ev.OutputItemDone(sequence_number=0, output_index=1, item=call),
        ev.ResponseCompleted(sequence_number=0, response=done),
    ]
    for i, event in enumerate(events):
        event.sequence_number = i
        if stream_id is not None:
            event.stream_id = stream_id
    return events


def ending_events() -> list[ev.StreamEvent]:
    incomplete = rs.Response.start(request(), response_id="resp_i", model="m", created_at=1)
    incomplete.status = "incomplete"
    incomplete.incomplete_details = rs.IncompleteDetails(reason="max_output_tokens")
    incomplete.usage = rs.ResponseUsage.of(5, 16)
    failed = rs.Response.start(request(), response_id="resp_f", model="m", created_at=1)
    failed.status = "failed"
    failed.error = rs.ResponseError(code="server_error", message="engine died")
    return [ev.ResponseIncomplete(sequence_number=3, response=incomplete),
            ev.ResponseFailed(sequence_number=4, response=failed),
            ev.ErrorEvent(sequence_number=5, message="bad", code="invalid_value", param="input")]


def test_every_event_type_parses_with_the_client_models():
    events = turn_events("resp_1") + ending_events()
    assert {type(e) for e in events} == set(typing.get_args(ev.ResponseStreamEvent)), \
        "every event type we define is exercised here"
    for event in events:
        encoded = encode_json(event)
        assert "stream_id" not in json.loads(encoded)
        parsed = SSE_ADAPTER.validate_json(encoded)
        assert parsed.type == event.__struct_config__.tag
        assert_client_keeps(parsed, encoded, RESPONSE_EXTRAS)
        assert decode_request(encoded, ev.ResponseStreamEvent) == event
    for event in turn_events("resp_2", stream_id="lane-a"):
        encoded = encode_json(event)
        parsed = WS_ADAPTER.validate_json(encoded)
        assert parsed.stream_id == "lane-a"
        assert_client_keeps(parsed, encoded, RESPONSE_EXTRAS)


def test_response_object_parses_and_echoes_the_request():
    completed = turn_events("resp_3")[-1].response
    encoded = encode_json(completed)
    assert_client_keeps(OAIResponse.model_validate_json(encoded), encoded, RESPONSE_EXTRAS)
    body = json.loads(encoded)
    assert body["object"] == "response" and body["error"] is None
    assert body["usage"]["total_tokens"] == 52
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 32
    assert body["output"][0]["content"][0] == {"type": "output_text", "text": "Hello",
                                               "annotations": [], "logprobs": []}
    assert body["instructions"] == "Be brief." and body["tools"][0]["name"] == "get_weather"
    assert (body["tool_choice"], body["text"], body["store"]) == ("auto", {"format": {
        "type": "text"}}, True)


def test_client_request_decodes_and_stream_accumulates():
    events = turn_events("resp_4")
    sse = b"".join(b"event: %s\ndata: %s\n\n" % (e.__struct_config__.tag.encode(), encode_json(e))
                   for e in events)
    client, seen = fake_client(sse, "text/event-stream")
    with client.responses.stream(
        model="m", instructions="Be brief.", previous_response_id="resp_0", store=False,
        input=[
            {"role": "user", "content": "untyped message"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"type": "message", "role": "assistant", "id": "msg_0", "status": "completed",
             "content": [{"type": "output_text", "text": "b", "annotations": []}]},
            {"type": "function_call", "call_id": "call_0", "name": "get_weather",
             "arguments": "{}", "id": "fc_0", "status": "completed"},
            {"type": "function_call_output", "call_id": "call_0", "output": "sunny"},
        ],
        tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False, max_output_tokens=32, temperature=0.2, top_p=0.8,
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"},
                         "strict": True}},
        metadata={"k": "v"}, user="u1", extra_body={"unknown_extra": 1},
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Hel", "lo"]
    assert final.output_text == "Hello" and final.output[1].arguments == '{"city":"Oslo"}'
    assert final.usage.input_tokens_details.cached_tokens == 32

    req = decode_request(seen[0], rs.ResponseCreateRequest)
    untyped, typed, echoed, call, result = req.input_items
    assert untyped == rs.InputMessage(role="user", content="untyped message")
    assert typed.content == [rs.InputText("a")]
    assert echoed.content == [rs.OutputText(text="b")] and echoed.id == "msg_0"
    assert call == rs.FunctionCall(call_id="call_0", name="get_weather", arguments="{}",
                                   id="fc_0", status="completed")
    assert result == rs.FunctionCallOutput(call_id="call_0", output="sunny")
    assert req.tools == [rs.FunctionTool(name="get_weather", description="Weather for a city.",
                                         parameters=TOOL["parameters"], strict=True)]
    assert req.tool_choice == rs.ToolChoiceFunction("get_weather")
    assert req.text.format == rs.FormatJSONSchema(name="w", schema={"type": "object"}, strict=True)
    assert (req.previous_response_id, req.store, req.stream, req.parallel_tool_calls) == \
        ("resp_0", False, True, False)
    assert (req.max_output_tokens, req.temperature, req.top_p, req.metadata, req.user) == \
        (32, 0.2, 0.8, {"k": "v"}, "u1")
    assert (req.generate, req.stream_id) == (True, None)


def test_null_flags_take_defaults_and_string_input_is_one_user_message():
    req = decode_request(b'{"input": "hi", "store": null, "generate": null, "stream": null, '
                         b'"parallel_tool_calls": null}', rs.ResponseCreateRequest)
    assert (req.store, req.generate, req.stream, req.parallel_tool_calls) == (True, True, False,
                                                                              True)
    assert req.input_items == [rs.InputMessage(role="user", content="hi")]


@pytest.mark.parametrize("body, param", [
    ('{"input": [{"role": "user"}]}', "input[0].content"),
    ('{"input": [{"role": "tool", "content": "x"}]}', "input[0].role"),
    ('{"input": [{"type": "input_image", "image_url": "x"}]}', "input[0].type"),
    ('{"input": [{"content": "no role, no type"}]}', "input[0].type"),
    ('{"input": [{"type": "function_call_output", "output": "x"}]}', "input[0].call_id"),
    ('{"input": "x", "tools": [{"type": "web_search"}]}', "tools[0].type"),
    ('{"input": "x", "tool_choice": {"type": "function"}}', "tool_choice.name"),
    ('{"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}',
     "text.format.schema"),
    ('{"input": "x", "max_output_tokens": 1.5}', "max_output_tokens"),
    ('{"input": "x", "conversation": "conv_123"}', "conversation"),
    ('{"input": "x", "prompt": {"id": "pmpt_1"}}', "prompt"),
    ('{"input": "x",', None),
])
def test_malformed_responses_bodies_name_the_parameter(body, param):
    with pytest.raises(APIError) as info:
        decode_request(body.encode(), rs.ResponseCreateRequest)
    assert (info.value.status, info.value.param) == (400, param)


def test_websocket_error_event_shape():
    err = ws_error_event(previous_response_not_found("resp_x"), stream_id="lane-a")
    encoded = encode_json(err)
    parsed = WS_ADAPTER.validate_json(encoded)
    assert_client_keeps(parsed, encoded, RESPONSE_EXTRAS)
    assert (parsed.type, parsed.status, parsed.stream_id) == ("error", 400, "lane-a")
    assert (parsed.error.code, parsed.error.param, parsed.error.type) == \
        ("previous_response_not_found", "previous_response_id", "invalid_request_error")
    mid_stream = json.loads(encode_json(ws_error_event(server_error(), sequence_number=7)))
    assert "stream_id" not in mid_stream and mid_stream["sequence_number"] == 7
    assert mid_stream["status"] == 500


@pytest.mark.parametrize("frame, param, code", [
    ('{"type": "response.steer", "previous_response_id": "r", "input": []}', "type",
     "unsupported_event_type"),
    ('{"type": "session.update"}', "type", "unsupported_event_type"),
    ('{"input": "x"}', "type", "missing_required_parameter"),
    ('{"type": "response.create", "stream_id": "no spaces"}', "stream_id", "invalid_stream_id"),
    ('{"type": "response.create", "stream_id": "l1", "input": [{"role": "user"}]}',
     "input[0].content", "missing_required_parameter"),
])
def test_bad_client_frames(frame, param, code):
    with pytest.raises(APIError) as info:
        decode_client_event(frame)
    assert (info.value.param, info.value.code) == (param, code)
    assert lane_of(frame) == ("l1" if '"l1"' in frame else None)


def serve_script(ws: ServerConnection, headers: dict[str, str]) -> None:
    """Answer each response.create with a scripted turn (or error) on the create's lane."""
    headers.update(path=ws.request.path, auth=ws.request.headers.get("Authorization", ""))
    for n, frame in enumerate(ws):
        try:
            req = decode_client_event(frame)
        except APIError as err:
            ws.send(encode_json(ws_error_event(err, lane_of(frame))), text=True)
            continue
        if req.previous_response_id == "resp_gone":
            err = previous_response_not_found(req.previous_response_id)
            ws.send(encode_json(ws_error_event(err, req.stream_id)), text=True)
            continue
        for event in turn_events(f"resp_ws{n}", req.stream_id):
            ws.send(encode_json(event), text=True)


def test_openai_websocket_session_with_lanes():
    headers: dict[str, str] = {}
    with serve(lambda ws: serve_script(ws, headers), "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        client = openai.OpenAI(api_key="sk-ws", base_url=f"http://127.0.0.1:{port}/v1")
        limits = ResponsesWebSocketLimits(max_lanes=4, max_events_per_lane=64, max_events=128,
                                          max_bytes_per_lane=1 << 20, max_bytes=1 << 21)
        with client.responses.connect() as conn, \
                ResponsesWebSocketSession(conn, limits=limits) as session:
            lane = session.lane("lane-a")
            lane.send({"type": "response.create", "model": "m", "input": "hi", "tools": [TOOL]})
            final = lane.get_final_response(timeout=10)
            assert final.status == "completed" and final.output_text == "Hello"
            assert final.output[1].call_id == "call_1"
            # A continuation whose parent is gone: the lane gets a typed error event.
            lane.send({"type": "response.create", "previous_response_id": "resp_gone",
                       "input": [{"type": "function_call_output", "call_id": "call_1",
                                  "output": "sunny"}]})
            with pytest.raises(ResponsesWebSocketError) as info:
                lane.get_final_response(timeout=10)
            assert info.value.event.error.code == "previous_response_not_found"
            # The default lane: events carry no stream_id.
            session.default.send({"type": "response.create", "model": "m", "input": "again",
                                  "generate": False})
            assert session.default.get_final_response(timeout=10).id.startswith("resp_ws")
        server.shutdown()
    assert headers == {"path": "/v1/responses", "auth": "Bearer sk-ws"}

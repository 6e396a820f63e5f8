"""Malformed and hostile input over HTTP and WebSocket: each gets its OpenAI-shaped error, and the
server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.runtime.conftest import API_KEY, MAX_CONCURRENT

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MSG = [{"role": "user", "content": "hi"}]


def chat(**body):
    return {"messages": MSG, "max_tokens": 4, **body}


HTTP_CASES = [
    # (name, method, path, body (bytes or dict), headers, status, param, code)
    ("malformed json", "POST", "/v1/chat/completions", b"{not json", AUTH, 400, None,
     "invalid_json"),
    ("array body", "POST", "/v1/chat/completions", b"[1, 2]", AUTH, 400, None, None),
    ("missing messages", "POST", "/v1/chat/completions", {"model": "x"}, AUTH, 400, "messages",
     "missing_required_parameter"),
    ("messages not a list", "POST", "/v1/chat/completions", {"messages": "hi"}, AUTH, 400,
     "messages", None),
    ("bad role", "POST", "/v1/chat/completions",
     {"messages": [{"role": "wizard", "content": "x"}]}, AUTH, 400, "messages[0]", None),
    ("temperature wrong type", "POST", "/v1/chat/completions", chat(temperature="hot"), AUTH,
     400, "temperature", "invalid_type"),
    ("temperature out of range", "POST", "/v1/chat/completions", chat(temperature=5), AUTH, 400,
     "temperature", None),
    ("max_tokens zero", "POST", "/v1/chat/completions", chat(max_tokens=0), AUTH, 400,
     "max_tokens", None),
    ("n=0", "POST", "/v1/chat/completions", chat(n=0), AUTH, 400, "n", None),
    ("n over the concurrency limit", "POST", "/v1/chat/completions", chat(n=MAX_CONCURRENT + 1),
     AUTH, 400, "n", "unsupported_value"),
    ("unknown model", "POST", "/v1/chat/completions", chat(model="gpt-9"), AUTH, 404, "model",
     "model_not_found"),
    ("prompt over context", "POST", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "word " * 5000}]}, AUTH, 400, "messages",
     "context_length_exceeded"),
    ("max_tokens over context", "POST", "/v1/chat/completions", chat(max_tokens=10**6), AUTH,
     400, "max_tokens", "context_length_exceeded"),
    ("top_logprobs too many", "POST", "/v1/chat/completions",
     chat(logprobs=True, top_logprobs=50), AUTH, 400, "top_logprobs", None),
    ("empty stop string", "POST", "/v1/chat/completions", chat(stop=[""]), AUTH, 400, "stop",
     None),
    ("logit_bias key not a token id", "POST", "/v1/chat/completions",
     chat(logit_bias={"abc": 5}), AUTH, 400, "logit_bias", None),
    ("logit_bias token outside the vocabulary", "POST", "/v1/chat/completions",
     chat(logit_bias={"99999999": 5}), AUTH, 400, "logit_bias", None),
    ("logit_bias value out of range", "POST", "/v1/chat/completions",
     chat(logit_bias={"5": 500}), AUTH, 400, "logit_bias", None),
    ("tool_choice unknown tool", "POST", "/v1/chat/completions",
     chat(tools=[{"type": "function", "function": {"name": "a"}}],
          tool_choice={"type": "function", "function": {"name": "b"}}), AUTH, 400,
     "tool_choice", None),
    ("oversized body", "POST", "/v1/chat/completions", b"x" * (9 << 20), AUTH, 413, None,
     "request_too_large"),
    ("unknown previous response", "POST", "/v1/responses",
     {"input": "hi", "previous_response_id": "resp_nope"}, AUTH, 400, "previous_response_id",
     "previous_response_not_found"),
    ("responses input wrong type", "POST", "/v1/responses", {"input": 42}, AUTH, 400, "input",
     None),
    ("stream_id over http", "POST", "/v1/responses", {"input": "hi", "stream_id": "a"}, AUTH,
     400, "stream_id", None),
    ("get unknown response", "GET", "/v1/responses/resp_nope", None, AUTH, 404, "response_id",
     None),
    ("no api key", "POST", "/v1/chat/completions", chat(), {}, 401, None, "invalid_api_key"),
    ("wrong api key", "GET", "/v1/models", None, {"Authorization": "Bearer sk-wrong"}, 401, None,
     "invalid_api_key"),
    ("unknown route", "GET", "/v1/nothing-here", None, AUTH, 404, None, None),
    ("metrics without a key", "GET", "/metrics", None, {}, 401, None, "invalid_api_key"),
    ("metrics with a wrong key", "GET", "/metrics", None, {"Authorization": "Bearer sk-wrong"},
     401, None, "invalid_api_key"),
    ("delete unknown response", "DELETE", "/v1/responses/resp_nope", None, AUTH, 404,
     "response_id", None),
    ("schema the grammar refuses", "POST", "/v1/responses",
     {"input": "hi", "max_output_tokens": 4, "text": {"format": {
         "type": "json_schema", "name": "x", "schema": {"type": "no-such-type"}}}}, AUTH, 400,
     "text.format", "invalid_value"),
]


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_error(server, case):
    _, method, path, body, headers, status, param, code = case
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    resp = httpx.request(method, server.base_url + path, content=content, headers=headers,
                         timeout=60)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param), error
    if code is not None:
        assert error["code"] == code, error


def ws_connect(server, key=API_KEY):
    url = server.base_url.replace("http", "ws") + "/v1/responses"
    return connect(url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None)


def next_terminal(ws):
    while True:
        event = json.loads(ws.recv(timeout=120))
        if event["type"] in ("error", "response.completed", "response.incomplete",
                             "response.failed"):
            return event


WS_CASES = [
    ("not json", "{oops", None, "invalid_json"),
    ("unknown event", json.dumps({"type": "session.update"}), "type", "unsupported_event_type"),
    ("bad temperature", json.dumps({"type": "response.create", "input": "x",
                                    "temperature": 9, "stream_id": "t"}), "temperature", None),
    ("bad lane id", json.dumps({"type": "response.create", "input": "x",
                                "stream_id": "bad lane!"}), "stream_id", "invalid_stream_id"),
    ("unknown previous", json.dumps({"type": "response.create", "input": "x",
                                     "previous_response_id": "resp_x", "stream_id": "p"}),
     "previous_response_id", "previous_response_not_found"),
]


def test_websocket_errors_keep_the_socket_open(server):
    with ws_connect(server) as ws:
        for name, frame, param, code in WS_CASES:
            ws.send(frame)
            event = next_terminal(ws)
            assert event["type"] == "error", name
            assert event["error"]["param"] == param and event["status"] == 400, (name, event)
            if code:
                assert event["error"]["code"] == code, (name, event)
            lane = json.loads(frame).get("stream_id") if frame.startswith("{\"") else None
            if lane and lane != "bad lane!":
                assert event["stream_id"] == lane, (name, event)
        # Busy lane: a second create while the first is in flight.
        create = {"type": "response.create", "input": "Tell me a story.", "stream_id": "busy",
                  "max_output_tokens": 64, "temperature": 0}
        ws.send(json.dumps(create))
        ws.send(json.dumps(create))
        seen = [next_terminal(ws), next_terminal(ws)]
        errors = [e for e in seen if e["type"] == "error"]
        assert len(errors) == 1 and errors[0]["error"]["code"] == "response_already_in_flight"
        assert all(e.get("stream_id") == "busy" for e in seen)
        # After all that, the same socket still serves.
        ws.send(json.dumps({"type": "response.create", "input": "hi", "max_output_tokens": 4}))
        assert next_terminal(ws)["type"] in ("response.completed", "response.incomplete")


def test_oversized_websocket_frame_gets_413_and_the_socket_keeps_serving(server):
    with ws_connect(server) as ws:
        # Over --max-body-bytes (8 MiB by default), under uvicorn's frame limit (4x that).
        ws.send(json.dumps({"type": "response.create", "input": "x" * (8 << 20)}))
        event = next_terminal(ws)
        assert event["type"] == "error" and event["status"] == 413, event
        assert event["error"]["code"] == "request_too_large"
        ws.send(json.dumps({"type": "response.create", "input": "hi", "max_output_tokens": 2}))
        assert next_terminal(ws)["type"] in ("response.completed", "response.incomplete")


def test_generations_over_the_limit_get_429_then_the_server_recovers(server):
    """``MAX_CONCURRENT`` long generations hold every slot; one more over HTTP (chat, Responses
    JSON and SSE) or on another lane is refused with 429, never failed or queued."""
    from tests.runtime.conftest import MAX_CONCURRENT

    long = {"type": "response.create", "input": "Write a very long story.", "temperature": 0,
            "max_output_tokens": 2000, "ignore_eos": True}
    with ws_connect(server) as ws:
        for lane in range(MAX_CONCURRENT):
            ws.send(json.dumps({**long, "stream_id": f"long{lane}"}))
        running = set()
        while len(running) < MAX_CONCURRENT:  # every one holds its slot once it streams text
            event = json.loads(ws.recv(timeout=120))
            assert event["type"] not in ("error", "response.failed"), event
            if event["type"] == "response.output_text.delta":
                running.add(event["stream_id"])
        for path, body in [("/v1/chat/completions", chat()),
                           ("/v1/responses", {"input": "hi", "max_output_tokens": 2}),
                           ("/v1/responses", {"input": "hi", "max_output_tokens": 2,
                                              "stream": True})]:
            resp = httpx.post(server.base_url + path, json=body, headers=AUTH, timeout=60)
            assert resp.status_code == 429, (path, resp.text)
            assert resp.json()["error"]["code"] == "rate_limit_exceeded"
        ws.send(json.dumps({"type": "response.create", "input": "hi", "stream_id": "extra"}))
        while (event := json.loads(ws.recv(timeout=120)))["stream_id"] != "extra":
            pass
        assert event["type"] == "error" and event["status"] == 429, event
    # Closing the socket aborted them (the engine runs none) and freed their slots (the
    # server counts a socket closed once its responses have ended).
    wait_for_gauge(server, "agentspeed_running_requests", 0)
    wait_for_gauge(server, "agentspeed_websocket_connections", 0)
    out = httpx.post(server.base_url + "/v1/chat/completions", json=chat(), headers=AUTH,
                     timeout=120)
    assert out.status_code == 200, out.text


def test_websocket_upgrade_needs_a_key(server):
    with pytest.raises(InvalidStatus) as info:
        with ws_connect(server, key="sk-wrong"):
            pass
    assert info.value.response.status_code == 401


def test_other_key_cannot_continue_read_or_delete(server):
    create = httpx.post(server.base_url + "/v1/responses", headers=AUTH, timeout=120,
                        json={"input": "Say yes.", "max_output_tokens": 4})
    response_id = create.json()["id"]
    other = {"Authorization": "Bearer sk-test-other"}
    cont = httpx.post(server.base_url + "/v1/responses", headers=other, timeout=120,
                      json={"input": "more", "previous_response_id": response_id})
    assert cont.json()["error"]["code"] == "previous_response_not_found"
    assert httpx.get(f"{server.base_url}/v1/responses/{response_id}", headers=other).status_code \
        == 404
    assert httpx.delete(f"{server.base_url}/v1/responses/{response_id}",
                        headers=other).status_code == 404
    assert httpx.get(f"{server.base_url}/v1/responses/{response_id}",
                     headers=AUTH).status_code == 200


def test_server_still_serves_after_the_errors(server, client):
    out = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MSG,
                                         max_tokens=4)
    assert out.choices[0].message.content is not None


def gauge(server, name):
    """The value of one Prometheus sample, ``name`` exactly as exposed (labels included)."""
    for line in httpx.get(server.base_url + "/metrics", headers=AUTH).text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(name)


def wait_for_gauge(server, name, value, timeout=30.0):
    """Poll /metrics until ``name`` reads ``value``: the server frees a socket after its close
    handshake, a moment after the client's ``close()`` returns."""
    import time

    deadline = time.monotonic() + timeout
    while gauge(server, name) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gauge(server, name) == value, name


def test_too_many_websockets_is_refused_then_recovers(server):
    from tests.runtime.conftest import MAX_CONNECTIONS

    wait_for_gauge(server, "agentspeed_websocket_connections", 0)  # no socket left by others
    sockets = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sockets.append(ws_connect(server))
        with pytest.raises(InvalidStatus) as info:
            ws_connect(server)
        assert info.value.response.status_code == 429
    finally:
        for ws in sockets:
            ws.close()
    wait_for_gauge(server, "agentspeed_websocket_connections", 0)
    with ws_connect(server) as ws:  # slots free again once sockets close
        ws.send(json.dumps({"type": "response.create", "input": "hi", "max_output_tokens": 2}))
        assert next_terminal(ws)["type"] in ("response.completed", "response.incomplete")


def test_closing_the_socket_aborts_and_frees_kv(server):
    ws = ws_connect(server)
    ws.send(json.dumps({"type": "response.create", "input": "Write a very long story.",
                        "max_output_tokens": 2000, "temperature": 0}))
    while json.loads(ws.recv(timeout=120))["type"] != "response.output_text.delta":
        pass
    ws.close()
    wait_for_gauge(server, "agentspeed_running_requests", 0)
    wait_for_gauge(server, 'agentspeed_kv_pages{state="in_use"}', 0)


def test_streams_abandoned_before_their_first_chunk_free_their_slots(server):
    """Clients that send a streamed chat request and leave before reading a byte, more of them
    than there are generation slots: each slot comes back, so a later request is served."""
    import socket
    import time

    from tests.runtime.conftest import MAX_CONCURRENT

    body = json.dumps(chat(stream=True, max_tokens=64)).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    for _ in range(MAX_CONCURRENT + 2):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head + body)
    deadline = time.monotonic() + 60  # the aborted generations end a moment after the close
    while True:
        out = httpx.post(server.base_url + "/v1/chat/completions", json=chat(), headers=AUTH,
                         timeout=120)
        if out.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out.status_code == 200, out.text
    wait_for_gauge(server, "agentspeed_running_requests", 0)

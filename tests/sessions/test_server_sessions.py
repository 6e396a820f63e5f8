"""Session behaviour through the server: a 10-turn WebSocket session reuses every turn, with
per-key salting no cached prefix crosses API keys, a chain made over the WebSocket does not exist
for another key, and response ids are long random hex."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from websockets.sync.client import connect

from sessions.manager import new_response_id
from tests.runtime.server import ServerProcess

KEYS = ("sk-salt-a", "sk-salt-b")


@pytest.fixture(scope="module")
def salted(default_model_path, tmp_path_factory):
    db = tmp_path_factory.mktemp("store") / "s.db"
    proc = ServerProcess("--num-pages", "1024", "--max-model-len", "8192", "--salt-cache-per-key",
                         "--session-store", f"sqlite:///{db}", api_keys=KEYS).wait_ready()
    yield proc
    proc.stop()


def tool_output(turn: int) -> str:
    rows = [f"{turn:02d}-{i:03d} file_{i}.py {i * 37 % 1000} bytes" for i in range(24)]
    return "Tool output:\n" + "\n".join(rows)  # roughly 200 tokens


def test_ten_turn_websocket_session_reuses_each_turn(salted):
    url = salted.base_url.replace("http", "ws") + "/v1/responses"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEYS[0]}"},
                 max_size=None) as ws:
        previous, prev_total = None, 0
        for turn in range(10):
            create = {"type": "response.create", "max_output_tokens": 12, "temperature": 0,
                      "input": [{"role": "user", "content": tool_output(turn)}]}
            if previous is None:
                create["instructions"] = "You summarise tool output in one line."
            else:
                create["previous_response_id"] = previous
            ws.send(json.dumps(create))
            while True:
                event = json.loads(ws.recv(timeout=180))
                if event["type"] in ("response.completed", "response.incomplete", "error",
                                     "response.failed"):
                    break
            assert event["type"] in ("response.completed", "response.incomplete"), event
            usage = event["response"]["usage"]
            if previous is not None:
                assert usage["input_tokens"] > prev_total + 150
                assert usage["input_tokens_details"]["cached_tokens"] >= prev_total - 16, turn
            previous = event["response"]["id"]
            prev_total = usage["input_tokens"] + usage["output_tokens"]
    metrics = httpx.get(salted.base_url + "/metrics",
                        headers={"Authorization": f"Bearer {KEYS[0]}"}).text
    assert "agentspeed_live_sessions" in metrics and "agentspeed_prefix_cache_hit_ratio" in metrics


def test_salting_shares_nothing_across_keys(salted):
    body = {"messages": [{"role": "user", "content": "A long shared system-like prompt. " * 40}],
            "max_tokens": 2, "temperature": 0}

    def cached(key):
        resp = httpx.post(salted.base_url + "/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {key}"})
        return resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    cached(KEYS[0])
    assert cached(KEYS[1]) == 0  # the same prompt under another key: nothing reused
    assert cached(KEYS[0]) > 200  # under its own key it is


def ws_turn(salted: ServerProcess, key: str, **create) -> dict:
    """One response.create on a fresh socket of ``key``; its terminal event."""
    url = salted.base_url.replace("http", "ws") + "/v1/responses"
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        ws.send(json.dumps({"type": "response.create", "max_output_tokens": 4,
                            "temperature": 0, **create}))
        while True:
            event = json.loads(ws.recv(timeout=180))
            if event["type"] in ("response.completed", "response.incomplete", "error",
                                 "response.failed"):
                return event


def test_websocket_chain_does_not_exist_for_another_key(salted):
    first = ws_turn(salted, KEYS[0], input="Say hello.")
    assert first["type"] in ("response.completed", "response.incomplete"), first
    response_id = first["response"]["id"]
    foreign = ws_turn(salted, KEYS[1], previous_response_id=response_id, input="Go on.")
    assert foreign["type"] == "error" and foreign["status"] == 400, foreign
    assert foreign["error"]["code"] == "previous_response_not_found"
    assert foreign["error"]["param"] == "previous_response_id"
    # Exactly what an id that never existed gets: nothing tells the two apart.
    unknown = ws_turn(salted, KEYS[1], previous_response_id=new_response_id(), input="Go on.")
    assert {k: v for k, v in unknown["error"].items() if k != "message"} == {
        k: v for k, v in foreign["error"].items() if k != "message"}
    for method in ("GET", "DELETE"):  # nor can the other key read or delete it
        resp = httpx.request(method, f"{salted.base_url}/v1/responses/{response_id}",
                             headers={"Authorization": f"Bearer {KEYS[1]}"}, timeout=60)
        assert resp.status_code == 404, resp.text
    own = ws_turn(salted, KEYS[0], previous_response_id=response_id, input="Go on.")
    assert own["type"] in ("response.completed", "response.incomplete"), own
    assert own["response"]["usage"]["input_tokens"] > first["response"]["usage"]["input_tokens"]


ID_FORMAT = re.compile(r"resp_[0-9a-f]{32,}")  # at least 128 random bits


def test_response_ids_carry_128_random_bits(salted):
    ids = [new_response_id() for _ in range(100_000)]
    assert all(ID_FORMAT.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
    # Every hex digit takes every value in each position: no fixed or counter-like part.
    for position in range(5, len(ids[0])):
        assert len({i[position] for i in ids[:2000]}) == 16, position
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    served = []
    for _ in range(3):
        resp = httpx.post(salted.base_url + "/v1/responses", headers=headers, timeout=120,
                          json={"input": "Hi.", "max_output_tokens": 1, "store": False})
        served.append(resp.json()["id"])
    assert all(ID_FORMAT.fullmatch(i) for i in served) and len(set(served)) == 3

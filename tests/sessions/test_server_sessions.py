"""Session behaviour through the server: a 10-turn WebSocket session reuses every turn, and with
per-key salting no cached prefix crosses API keys."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect

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

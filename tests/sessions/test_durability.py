"""Sessions outlive their server: a ``kill -9`` (SQLite), a hop to another replica (Redis), and a
Redis outage (fast 503s, then recovery with no restart). Real ``agentspeed serve`` subprocesses.

Four server processes, at most two at a time: S1 (SQLite), then S2 on S1's file after S1 is
killed; then A and B on one Redis, shared by the two Redis tests.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import openai
import pytest

from tests.runtime.server import ServerProcess
from tests.sessions.conftest import RedisServer, need_redis_server

API_KEY = "sk-durable-owner"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "SmolLM2-135M-Instruct"
SERVER_ARGS = ("--num-pages", "256", "--max-model-len", "1024")
GREEDY = {"model": MODEL, "temperature": 0, "max_output_tokens": 8}


def serve(store_url: str) -> ServerProcess:
    return ServerProcess("--session-store", store_url, *SERVER_ARGS, api_keys=(API_KEY,))


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=server.base_url + "/v1", max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    need_redis_server()
    # Persistent (AOF, fsync always), so a chain made before an outage is still there after it.
    server = RedisServer(str(tmp_path_factory.mktemp("redis")), persistent=True).start()
    yield server
    server.resume()
    server.stop()


@pytest.fixture(scope="module")
def servers(default_model_path, redis_server):
    """A and B: two replicas on one Redis (started together; each start takes ~20 s)."""
    procs = {"a": serve(redis_server.url(0)), "b": serve(redis_server.url(0))}
    try:
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def test_sqlite_chain_survives_kill_9(default_model_path, tmp_path):
    db_url = f"sqlite:///{tmp_path}/s.db"
    s1_proc = serve(db_url).wait_ready()
    reference = None
    try:
        s1 = client(s1_proc)
        first = s1.responses.create(instructions="You are terse.", input="Name a colour.",
                                    store=True, **GREEDY)
        with s1.responses.stream(previous_response_id=first.id, input="Now name a fruit.",
                                 **GREEDY) as stream:
            for event in stream:
                if event.type in ("response.completed", "response.incomplete"):
                    reference = event.response
                    break  # and kill -9 the instant the client hears the turn is done
            assert s1_proc.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        s1_proc.stop(signal.SIGKILL)
    assert reference is not None and reference.output_text

    s2_proc = serve(db_url).wait_ready()
    try:
        s2 = client(s2_proc)
        again = s2.responses.create(previous_response_id=first.id, input="Now name a fruit.",
                                    **GREEDY)
        # The same exact tokens went in (recomputed, not cached), so greedy decoding repeats.
        assert again.output_text == reference.output_text
        assert again.usage.input_tokens == reference.usage.input_tokens
        assert again.usage.output_tokens == reference.usage.output_tokens
        assert again.id != reference.id
        # The last turn before the kill was committed too.
        assert s2.responses.retrieve(reference.id).output_text == reference.output_text
    finally:
        s2_proc.stop()


def test_redis_chain_hops_between_replicas(servers):
    a, b = client(servers["a"]), client(servers["b"])
    r1 = a.responses.create(instructions="You are terse.", input="My name is Ada. Say hi.",
                            **GREEDY)
    r2 = b.responses.create(previous_response_id=r1.id, input="What is my name?", **GREEDY)
    r2_on_a = a.responses.create(previous_response_id=r1.id, input="What is my name?",
                                 **GREEDY)
    # B continued from exactly the tokens A stored: same prompt, same greedy output.
    assert r2.usage.input_tokens == r2_on_a.usage.input_tokens
    assert r2.output_text == r2_on_a.output_text
    assert r2.usage.input_tokens > r1.usage.input_tokens + r1.usage.output_tokens
    r3 = a.responses.create(previous_response_id=r2.id, input="Thanks.", **GREEDY)
    assert r3.usage.input_tokens > r2.usage.input_tokens + r2.usage.output_tokens
    assert b.responses.retrieve(r3.id).output_text == r3.output_text
    b.responses.delete(r3.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(r3.id)


def post(server: ServerProcess, body: dict) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    resp = httpx.post(server.base_url + "/v1/responses", json=body, headers=AUTH, timeout=60)
    return resp, time.monotonic() - start


def assert_store_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "session_store_unavailable"
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_redis_outage_is_a_fast_503_then_recovers(servers, redis_server):
    a = client(servers["a"])
    before = a.responses.create(input="Say OK.", **GREEDY)
    redis_server.stop()
    try:
        resp, took = post(servers["a"], {"previous_response_id": before.id, "input": "Again.",
                                         **GREEDY})
        assert_store_unavailable(resp)
        assert took < 3.5
        got = httpx.get(f"{servers['a'].base_url}/v1/responses/{before.id}", headers=AUTH,
                        timeout=60)
        assert_store_unavailable(got)
        # A stored turn is never reported finished unless it was saved.
        resp, _ = post(servers["a"], {"input": "Hi.", **GREEDY, "max_output_tokens": 2})
        assert_store_unavailable(resp)
        with httpx.stream("POST", servers["a"].base_url + "/v1/responses", headers=AUTH,
                          json={"input": "Hi.", **GREEDY, "max_output_tokens": 2,
                                "stream": True}, timeout=60) as stream:
            events = [json.loads(line[6:]) for line in stream.iter_lines()
                      if line.startswith("data: ")]
        kinds = [e["type"] for e in events]
        assert "response.completed" not in kinds and kinds[-1] == "error", kinds
        assert events[-1]["code"] == "session_store_unavailable"
        # store=false needs no store at all.
        resp, _ = post(servers["a"], {"input": "Hi.", **GREEDY, "max_output_tokens": 2,
                                      "store": False})
        assert resp.status_code == 200, resp.text
    finally:
        redis_server.start()
    # Back, with no server restart: both replicas reconnect on their next request.
    after = a.responses.create(previous_response_id=before.id, input="Again.", **GREEDY)
    assert after.usage.input_tokens > before.usage.input_tokens + before.usage.output_tokens
    assert client(servers["b"]).responses.retrieve(after.id).output_text == after.output_text

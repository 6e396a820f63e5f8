"""Sessions outlive their server: a ``kill -9`` (SQLite), a hop to another replica (Redis), and a
Redis outage (a turn in flight is still delivered and saved later; fast 503s for what needs Redis;
recovery with no restart). Real ``agentspeed serve`` subprocesses.

Four server processes, at most two at a time: S1 (SQLite), then S2 on S1's file after S1 is
killed; then A and B on one Redis, shared by the Redis tests (store TTLs that follow the lease,
replica hops, the outage).
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import msgspec
import openai
import pytest
import redis

from engine.config import EngineConfig
from sessions.manager import STORE_TTL_LEASES
from sessions.record import ResponseRecord, tools_fingerprint
from tests.runtime.server import ServerProcess
from tests.sessions.conftest import RedisServer, need_redis_server

API_KEY = "sk-durable-owner"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "SmolLM2-135M-Instruct"
SERVER_ARGS = ("--num-pages", "256", "--max-model-len", "1024")
GREEDY = {"model": MODEL, "temperature": 0, "max_output_tokens": 8}
PAGE_SIZE = EngineConfig.page_size  # the servers run with the default
LEASE_S = 300.0  # --session-lease-s of every server here
TTL_MS = STORE_TTL_LEASES * LEASE_S * 1000  # the retention rule, in Redis's unit
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def serve(store_url: str) -> ServerProcess:
    return ServerProcess("--session-store", store_url, "--session-lease-s", str(LEASE_S),
                         *SERVER_ARGS, api_keys=(API_KEY,))


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
        # Its KV is recomputed once: nothing was cached on the fresh server, and the next turn
        # reuses everything up to the last (partial) page of the recomputed chain.
        assert again.usage.input_tokens_details.cached_tokens == 0
        then = s2.responses.create(previous_response_id=again.id, input="And a vegetable.",
                                   **GREEDY)
        seen = again.usage.input_tokens + again.usage.output_tokens
        assert then.usage.input_tokens > seen
        assert then.usage.input_tokens_details.cached_tokens >= seen - PAGE_SIZE
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


def test_redis_ttl_follows_the_lease_and_each_turn_renews_it(servers, redis_server):
    raw = redis.Redis.from_url(redis_server.url(0))
    decode = msgspec.msgpack.Decoder(ResponseRecord).decode

    def stored(response_id: str) -> tuple[ResponseRecord, int]:
        key = f"agentspeed:resp:{response_id}"
        return decode(raw.get(key)), raw.pttl(key)

    r1 = client(servers["a"]).responses.create(
        instructions="You are terse.", input="Name a tool.", tools=[WEATHER],
        tool_choice="none", **GREEDY)
    rec1, ttl1 = stored(r1.id)
    assert TTL_MS - 60_000 < ttl1 <= TTL_MS
    assert rec1.lease_expires_at - rec1.last_used_at == pytest.approx(LEASE_S)
    assert rec1.tools_fingerprint == tools_fingerprint(rec1.tools) != ""
    raw.pexpire(f"agentspeed:resp:{r1.id}", 60_000)  # as if most of its life had passed
    # The next turn, on the other replica, renews the lease and the whole chain's TTL.
    r2 = client(servers["b"]).responses.create(previous_response_id=r1.id, input="Another.",
                                               **GREEDY)
    rec2, ttl2 = stored(r2.id)
    rec1_again, ttl1 = stored(r1.id)
    assert rec1_again == rec1  # refreshed, not rewritten
    for ttl in (ttl1, ttl2):
        assert TTL_MS - 60_000 < ttl <= TTL_MS
    assert rec2.session_id == r1.id and rec2.ancestor_ids == [r1.id]
    assert rec2.last_used_at > rec1.last_used_at
    assert rec2.lease_expires_at > rec1.lease_expires_at  # the session's expiry moved forward
    assert rec2.lease_expires_at - rec2.last_used_at == pytest.approx(LEASE_S)
    assert rec2.tools_fingerprint == rec1.tools_fingerprint  # the tools came with the chain
    raw.close()


def post(server: ServerProcess, body: dict) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    resp = httpx.post(server.base_url + "/v1/responses", json=body, headers=AUTH, timeout=60)
    return resp, time.monotonic() - start


def assert_store_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "session_store_unavailable"
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def sse_events(stream: httpx.Response):
    for line in stream.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


def gauge(server: ServerProcess, name: str) -> float:
    text = httpx.get(server.base_url + "/metrics", headers=AUTH, timeout=30).text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not in /metrics"
    return float(values[0])


def test_redis_outage_keeps_in_flight_turns_then_recovers(servers, redis_server):
    a = client(servers["a"])
    before = a.responses.create(input="Say OK.", **GREEDY)
    deferred = gauge(servers["a"], "agentspeed_session_saves_deferred")
    # A long turn, accepted while Redis is up (its previous response is read from Redis); Redis
    # dies at its first token, long before its 32nd (ignore_eos: it runs to max_output_tokens).
    long_turn = {"previous_response_id": before.id, "input": "Count to one hundred.",
                 **GREEDY, "max_output_tokens": 32, "ignore_eos": True, "stream": True}
    deltas, last = [], None
    try:
        with httpx.stream("POST", servers["a"].base_url + "/v1/responses", headers=AUTH,
                          json=long_turn, timeout=120) as stream:
            for event in sse_events(stream):
                if event["type"] == "response.output_text.delta":
                    if not deltas:
                        redis_server.stop()
                    deltas.append(event["delta"])
                last = event
        assert deltas and redis_server.proc.poll() is not None
        # The client gets the whole turn, as if nothing happened...
        assert last["type"] == "response.incomplete", last
        in_flight = last["response"]
        assert in_flight["usage"]["output_tokens"] == 32
        assert in_flight["output"][0]["content"][0]["text"] == "".join(deltas)
        # ...while its record waits in A's retry buffer (so Redis really died mid-turn).
        assert gauge(servers["a"], "agentspeed_session_saves_pending") == 1
        assert gauge(servers["a"], "agentspeed_session_saves_deferred") == deferred + 1

        # Anything that needs Redis fails fast and clearly, the waiting turn included.
        for previous in (before.id, in_flight["id"]):
            resp, took = post(servers["a"], {"previous_response_id": previous, "input": "Again.",
                                             **GREEDY})
            assert_store_unavailable(resp)
            assert took < 3.5
        got = httpx.get(f"{servers['a'].base_url}/v1/responses/{before.id}", headers=AUTH,
                        timeout=60)
        assert_store_unavailable(got)
        # A new stored turn is answered too and waits with the other.
        resp, _ = post(servers["a"], {"input": "Hi.", **GREEDY, "max_output_tokens": 2})
        assert resp.status_code == 200, resp.text
        new_turn = resp.json()
        assert gauge(servers["a"], "agentspeed_session_saves_pending") == 2
        # store=false needs no store at all.
        resp, _ = post(servers["a"], {"input": "Hi.", **GREEDY, "max_output_tokens": 2,
                                      "store": False})
        assert resp.status_code == 200, resp.text
    finally:
        if redis_server.proc.poll() is not None:
            redis_server.start()
    # Back, with no server restart: the waiting turns are saved (asking for one flushes them).
    got = httpx.get(f"{servers['a'].base_url}/v1/responses/{in_flight['id']}", headers=AUTH,
                    timeout=60)
    assert got.status_code == 200, got.text
    assert got.json()["output"] == in_flight["output"]
    assert gauge(servers["a"], "agentspeed_session_saves_pending") == 0
    raw = redis.Redis.from_url(redis_server.url(0))
    assert raw.info("commandstats")["cmdstat_set"]["calls"] == 2  # each saved once
    raw.close()
    # In Redis, not just in A: replica B continues the in-flight turn's chain, and A the older.
    b = client(servers["b"])
    after = b.responses.create(previous_response_id=in_flight["id"], input="Thanks.", **GREEDY)
    assert after.usage.input_tokens > in_flight["usage"]["input_tokens"] + 32
    assert b.responses.retrieve(new_turn["id"]).output_text == new_turn["output"][0][
        "content"][0]["text"]
    again = a.responses.create(previous_response_id=before.id, input="Again.", **GREEDY)
    assert again.usage.input_tokens > before.usage.input_tokens + before.usage.output_tokens

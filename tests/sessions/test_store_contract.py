"""One contract, three stores: SQLite (a temp file), memory, and a real Redis server.
TTL refresh (``touch``) on each; expiry against a manual clock where the store takes one.

Plus what only some stores promise: SQLite survives a reopen; Redis fails fast while it is down
or hung and works again, on the same store object, once it is back.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time

import msgspec
import pytest

from sessions.record import ResponseRecord, tools_fingerprint
from sessions.stores import StoreUnavailableError, default_sqlite_path, open_store
from sessions.stores.memory import MemoryStore
from sessions.stores.redis import RedisStore
from sessions.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def make_record(response_id: str | None = None, **fields) -> ResponseRecord:
    values = dict(
        response_id=response_id or "resp_" + secrets.token_hex(24), owner="a1" * 16,
        model="SmolLM2-135M-Instruct", created_at=1_700_000_000.25,
        token_ids=[1, 0, 49151, 2**31 - 1, 151_643, 7, 7, 7], ends_with_end_of_turn=True,
        previous_response_id="resp_" + "0" * 48, instructions="Be terse.",
        tools=[{"name": "get_weather", "description": "Weather now.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}],
        store=True, response_json=b'{"id": "x", "output": []}\x00\xff\xfe')
    values.update(fields)
    return ResponseRecord(**values)


@pytest.fixture(params=["sqlite", "memory", "redis"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        store = SQLiteStore(str(tmp_path / "sessions.sqlite3"))
    elif request.param == "memory":
        store = MemoryStore()
    else:
        store = RedisStore(request.getfixturevalue("redis_url"))
    yield store
    await store.close()


# ---------------------------------------------------------------------------------- contract
async def test_round_trip_is_exact(store):
    record = make_record()
    await store.put(record, None)
    got = await store.get(record.response_id)
    assert got == record
    assert got.token_ids == [1, 0, 49151, 2**31 - 1, 151_643, 7, 7, 7]
    assert got.response_json == b'{"id": "x", "output": []}\x00\xff\xfe'
    minimal = make_record(previous_response_id=None, instructions=None, tools=None,
                          token_ids=[], ends_with_end_of_turn=False, store=False,
                          response_json=b"")
    await store.put(minimal, None)
    assert await store.get(minimal.response_id) == minimal


async def test_missing_is_none(store):
    assert await store.get("resp_" + secrets.token_hex(24)) is None


async def test_overwrite_replaces_record_and_ttl(store):
    first = make_record(token_ids=[1, 2, 3])
    await store.put(first, 0.3)
    second = make_record(first.response_id, token_ids=[4, 5, 6, 7])
    await store.put(second, None)  # no TTL now: the old expiry must not carry over
    await asyncio.sleep(0.5)
    assert await store.get(first.response_id) == second


async def test_delete(store):
    record = make_record()
    await store.put(record, None)
    assert await store.delete(record.response_id) is True
    assert await store.get(record.response_id) is None
    assert await store.delete(record.response_id) is False
    assert await store.delete("resp_never") is False


async def test_ttl_expiry(store):
    short, forever, long = make_record(), make_record(), make_record()
    await store.put(short, 0.3)
    await store.put(forever, None)
    await store.put(long, 60)
    assert await store.get(short.response_id) == short
    await asyncio.sleep(0.5)
    assert await store.get(short.response_id) is None
    assert await store.delete(short.response_id) is False  # expired is gone, not just hidden
    assert await store.get(forever.response_id) == forever
    assert await store.get(long.response_id) == long


async def test_concurrent_puts_and_gets(store):
    records = [make_record(token_ids=list(range(i, i + 2000))) for i in range(64)]
    await asyncio.gather(*(store.put(r, 60 if i % 2 else None) for i, r in enumerate(records)))
    # Reads of stored ids, overwrites and reads of missing ids, all interleaved.
    fresh = [make_record(r.response_id, token_ids=[i]) for i, r in enumerate(records[:16])]
    results = await asyncio.gather(
        *(store.get(r.response_id) for r in records[16:]),
        *(store.put(r, None) for r in fresh),
        *(store.get(f"resp_missing_{i}") for i in range(16)))
    assert results[:48] == records[16:]
    assert results[64:] == [None] * 16
    got = await asyncio.gather(*(store.get(r.response_id) for r in fresh))
    assert got == fresh


# ---------------------------------------------------------------------------------- SQLite
async def test_sqlite_survives_reopen(tmp_path):
    path = str(tmp_path / "deep" / "dir" / "s.db")  # parents are created
    store = SQLiteStore(path)
    kept, expiring, deleted = make_record(), make_record(), make_record()
    await store.put(kept, 3600)
    await store.put(expiring, 0.2)
    await store.put(deleted, None)
    await store.delete(deleted.response_id)
    await store.close()
    await asyncio.sleep(0.3)
    reopened = SQLiteStore(path)
    try:
        assert await reopened.get(kept.response_id) == kept  # the TTL is wall-clock, kept too
        assert await reopened.get(expiring.response_id) is None
        assert await reopened.get(deleted.response_id) is None
    finally:
        await reopened.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_purges_expired_rows(tmp_path):
    path = str(tmp_path / "s.db")
    store = SQLiteStore(path, purge_interval_s=3600)
    records = [make_record() for _ in range(5)]
    for r in records:
        await store.put(r, 0.1)
    await store.put(make_record(), None)
    await asyncio.sleep(0.2)
    assert await store.get(records[0].response_id) is None  # read: deleted on the spot
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 5
    assert await store.purge_expired() == 4
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 1
    await store.close()


async def test_sqlite_locked_file_is_unavailable_not_a_crash(tmp_path):
    path = str(tmp_path / "s.db")
    store = SQLiteStore(path, busy_timeout_ms=200)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    try:
        with pytest.raises(StoreUnavailableError):
            await store.put(make_record(), None)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    record = make_record()
    await store.put(record, None)
    assert await store.get(record.response_id) == record
    await store.close()


# ---------------------------------------------------------------------------------- Redis
async def assert_unavailable_fast(call) -> None:
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        await call
    assert time.monotonic() - start < 3.0


async def test_redis_outage_fails_fast_and_recovers(redis_server):
    store = RedisStore(redis_server.url(2))
    record = make_record()
    await store.put(record, None)
    assert await store.get(record.response_id) == record

    redis_server.stop()  # down: connections refused
    await assert_unavailable_fast(store.get(record.response_id))
    await assert_unavailable_fast(store.put(make_record(), None))
    await assert_unavailable_fast(store.delete(record.response_id))

    redis_server.start()  # same port, empty (not persistent); same store object
    assert await store.get(record.response_id) is None
    await store.put(record, None)
    assert await store.get(record.response_id) == record

    redis_server.pause()  # hung: TCP accepts, nothing answers; only the timeouts save us
    await assert_unavailable_fast(store.get(record.response_id))
    await assert_unavailable_fast(store.put(make_record(), 5))
    redis_server.resume()
    assert await store.get(record.response_id) == record

    redis_server.stop()  # a restart while idle: every pooled connection is now dead
    redis_server.start()
    assert await store.get(record.response_id) is None  # reconnects; no error reaches us
    await store.close()


async def test_redis_key_layout_and_ttl(redis_server):
    import redis.asyncio as aioredis

    store = RedisStore(redis_server.url(3))
    raw = aioredis.Redis.from_url(redis_server.url(3))
    record = make_record()
    await store.put(record, 30)
    key = f"agentspeed:resp:{record.response_id}"
    assert await raw.keys("*") == [key.encode()]
    assert 29_000 < await raw.pttl(key) <= 30_000
    await store.put(record, None)
    assert await raw.pttl(key) == -1  # an overwrite without TTL persists
    await raw.aclose()
    await store.close()


# ---------------------------------------------------------------------------------- by URL
async def test_open_store_by_url(tmp_path, monkeypatch, redis_url):
    monkeypatch.setenv("AGENTSPEED_CACHE", str(tmp_path / "cache"))
    assert default_sqlite_path() == str(tmp_path / "cache" / "sessions.sqlite3")
    for url in (None, "sqlite"):
        store = open_store(url)
        assert isinstance(store, SQLiteStore) and store.path == default_sqlite_path()
        await store.close()
    assert os.path.exists(default_sqlite_path())
    assert str(tmp_path).startswith("/")
    for url in (f"sqlite://{tmp_path}/x/y.db", f"sqlite:///{tmp_path}/x/y.db"):  # /// and ////
        store = open_store(url)
        assert isinstance(store, SQLiteStore) and store.path == f"{tmp_path}/x/y.db"
        await store.close()
    store = open_store("sqlite:///:memory:")
    record = make_record()
    await store.put(record, None)
    assert isinstance(store, SQLiteStore) and await store.get(record.response_id) == record
    await store.close()
    assert isinstance(open_store("memory://"), MemoryStore)
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    await store.put(record, None)
    assert await store.get(record.response_id) == record
    await store.close()
    for bad in ("postgres://db/x", "sqlite://relative/path.db", "redis:///0", "s3://bucket",
                "sessions.db"):
        with pytest.raises(ValueError):
            open_store(bad)


# ---------------------------------------------------------------------------------- TTL refresh
async def test_touch_refreshes_only_what_is_there(store):
    short, forever = make_record(), make_record()
    await store.put(short, 60)
    await store.put(forever, None)
    missing = "resp_" + secrets.token_hex(24)
    assert await store.touch([short.response_id, missing, forever.response_id], 3600) == 2
    assert await store.touch([], 3600) == 0
    assert await store.touch([missing], 3600) == 0
    assert await store.get(missing) is None  # touch never creates
    assert await store.get(short.response_id) == short
    assert await store.get(forever.response_id) == forever


class ManualClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_expiry_and_touch_follow_the_clock(kind, tmp_path):
    clock = ManualClock(1_700_000_000.0)
    store = (SQLiteStore(str(tmp_path / "s.db"), clock=clock) if kind == "sqlite"
             else MemoryStore(clock=clock))
    leased, forever = make_record(), make_record()
    await store.put(leased, 10)
    await store.put(forever, None)
    clock.now += 9
    assert await store.touch([leased.response_id, forever.response_id], 10) == 2
    clock.now += 9.9  # past the first expiry (t+10), inside the refreshed one (t+19)
    assert await store.get(leased.response_id) == leased
    assert await store.get(forever.response_id) == forever  # touched: now it expires too
    clock.now += 0.1
    assert await store.get(leased.response_id) is None
    assert await store.get(forever.response_id) is None
    assert await store.touch([leased.response_id], 10) == 0  # expired is never revived
    clock.now += 100
    assert await store.get(leased.response_id) is None
    if kind == "sqlite":  # read after expiry: the rows are gone, not just hidden
        with sqlite3.connect(str(tmp_path / "s.db")) as conn:
            assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0
    await store.close()


async def test_sqlite_touch_many_ids(tmp_path):
    clock = ManualClock(1_700_000_000.0)
    store = SQLiteStore(str(tmp_path / "s.db"), clock=clock)
    records = [make_record(token_ids=[i]) for i in range(1203)]  # several UPDATE batches
    for r in records:
        await store.put(r, 5)
    ids = [r.response_id for r in records]
    assert await store.touch(ids + ["resp_missing"], 50) == 1203
    clock.now += 30
    assert await store.get(ids[0]) == records[0] and await store.get(ids[-1]) == records[-1]
    assert await store.purge_expired() == 0
    await store.close()


async def test_redis_touch_sets_pttl(redis_server):
    import redis.asyncio as aioredis

    store = RedisStore(redis_server.url(4))
    raw = aioredis.Redis.from_url(redis_server.url(4))
    leased, forever = make_record(), make_record()
    await store.put(leased, 30)
    await store.put(forever, None)
    assert await store.touch([leased.response_id, "resp_gone", forever.response_id], 600) == 2
    for r in (leased, forever):
        assert 599_000 < await raw.pttl(store.key(r.response_id)) <= 600_000
    assert await raw.exists(store.key("resp_gone")) == 0
    redis_server.stop()
    await assert_unavailable_fast(store.touch([leased.response_id], 600))
    await raw.aclose()
    await store.close()


# ---------------------------------------------------------------------------------- compatibility
class RecordV1(msgspec.Struct, kw_only=True):
    """A ResponseRecord as the first release wrote it (no timestamps, chain or fingerprint)."""

    response_id: str
    owner: str
    model: str
    created_at: float
    token_ids: list[int]
    ends_with_end_of_turn: bool
    previous_response_id: str | None = None
    session_id: str = ""
    instructions: str | None = None
    tools: list[dict] | None = None
    store: bool = True
    response_json: bytes = b""


async def test_records_of_the_first_release_still_read(tmp_path, redis_url):
    old = RecordV1(response_id="resp_" + secrets.token_hex(24), owner="o", model="m",
                   created_at=1.5, token_ids=[1, 2, 3], ends_with_end_of_turn=True,
                   session_id="resp_first", tools=[{"name": "f", "parameters": {}}])
    blob = msgspec.msgpack.encode(old)
    sqlite_store = SQLiteStore(str(tmp_path / "s.db"))
    with sqlite3.connect(str(tmp_path / "s.db"), isolation_level=None) as conn:
        conn.execute("INSERT INTO responses VALUES (?, NULL, ?)", (old.response_id, blob))
    redis_store = RedisStore(redis_url)
    await redis_store._call("SET", redis_store.key(old.response_id), blob)
    for store in (sqlite_store, redis_store):
        got = await store.get(old.response_id)
        assert got is not None and got.token_ids == [1, 2, 3] and got.session_id == "resp_first"
        assert (got.last_used_at, got.lease_expires_at, got.ancestor_ids,
                got.tools_fingerprint) == (0.0, 0.0, [], "")
        await store.close()
    # And an older server reads what this one writes (unknown fields are skipped).
    new = make_record(last_used_at=2.0, lease_expires_at=602.0, ancestor_ids=["resp_a"],
                      tools_fingerprint="ab" * 32)
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(new), type=RecordV1)
    assert back.token_ids == new.token_ids and back.tools == new.tools


def test_tools_fingerprint():
    weather = {"name": "get_weather", "description": "Weather now.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    reordered = {"parameters": {"properties": {"city": {"type": "string"}}, "type": "object"},
                 "description": "Weather now.", "name": "get_weather"}
    clock_tool = {"name": "now", "description": "The time.", "parameters": {}}
    fp = tools_fingerprint([weather, clock_tool])
    assert len(fp) == 64 and set(fp) <= set("0123456789abcdef")
    assert tools_fingerprint([reordered, clock_tool]) == fp  # key order is not a change
    assert tools_fingerprint([clock_tool, weather]) != fp  # tool order is (the prompt differs)
    changed = {**weather, "description": "Weather now, in Celsius."}
    assert tools_fingerprint([changed, clock_tool]) != fp
    assert tools_fingerprint(None) == tools_fingerprint([]) == ""

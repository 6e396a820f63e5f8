"""SessionManager on a real Redis: the retention rule (TTL = STORE_TTL_LEASES leases, refreshed
along the chain by every turn), and the retry buffer that keeps finished turns through an outage.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
import redis.asyncio as aioredis

from sessions.manager import STORE_TTL_LEASES, ResponseNotFoundError, SessionManager
from sessions.record import ResponseRecord
from sessions.stores import StoreUnavailableError
from sessions.stores.memory import MemoryStore
from sessions.stores.redis import RedisStore

pytestmark = pytest.mark.anyio
OWNER = "f0" * 16


@pytest.fixture
def anyio_backend():
    return "asyncio"


def turn(previous: ResponseRecord | None = None, num_tokens: int = 4,
         store: bool = True) -> ResponseRecord:
    response_id = "resp_" + secrets.token_hex(24)
    ancestors = [*previous.ancestor_ids, previous.response_id] if previous else []
    base = previous.token_ids if previous else []
    return ResponseRecord(
        response_id=response_id, owner=OWNER, model="m", created_at=time.time(),
        token_ids=base + list(range(num_tokens)), ends_with_end_of_turn=True,
        previous_response_id=previous.response_id if previous else None,
        session_id=previous.session_id if previous else response_id, store=store,
        ancestor_ids=ancestors)


async def set_calls(raw: aioredis.Redis) -> int:
    return (await raw.info("commandstats")).get("cmdstat_set", {}).get("calls", 0)


async def test_ttl_is_leases_and_every_turn_refreshes_the_chain(redis_url):
    store = RedisStore(redis_url)
    raw = aioredis.Redis.from_url(redis_url)
    manager = SessionManager(store, lease_s=10)
    ttl_ms = STORE_TTL_LEASES * 10 * 1000
    assert manager.ttl_s == STORE_TTL_LEASES * 10
    first = turn()
    assert await manager.save(first) is True
    assert ttl_ms - 1000 < await raw.pttl(store.key(first.response_id)) <= ttl_ms
    # Most of its life gone (as after a long tool run): the next turn renews it in full.
    await raw.pexpire(store.key(first.response_id), 5000)
    second = turn(first)
    assert await manager.save(second) is True
    for r in (first, second):
        assert ttl_ms - 1000 < await raw.pttl(store.key(r.response_id)) <= ttl_ms
    # The whole chain, not only the parent.
    await raw.pexpire(store.key(first.response_id), 5000)
    await raw.pexpire(store.key(second.response_id), 5000)
    third = turn(second)
    assert third.ancestor_ids == [first.response_id, second.response_id]
    await manager.save(third)
    for r in (first, second, third):
        assert ttl_ms - 1000 < await raw.pttl(store.key(r.response_id)) <= ttl_ms
    assert await manager.resolve(first.response_id, OWNER) == first
    # store=false: only the connection-local store holds it, under the same rule.
    local = MemoryStore()
    private = turn(third, store=False)
    assert await manager.save(private, local) is True
    assert await raw.exists(store.key(private.response_id)) == 0
    assert await manager.resolve(private.response_id, OWNER, local) == private
    await raw.aclose()
    await manager.close()


async def test_outage_keeps_finished_turns_and_saves_each_once(redis_server):
    store = RedisStore(redis_server.url(0))
    manager = SessionManager(store, lease_s=10, retry_s=(0.02, 0.05))
    first = turn()
    await manager.save(first)

    redis_server.stop()
    second = turn(first)
    assert await manager.save(second) is False  # kept, not thrown away
    assert list(manager.pending) == [second.response_id] and manager.num_deferred == 1
    for waiting_or_stored in (second, first):  # not continuable yet: fast and clear
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await manager.resolve(waiting_or_stored.response_id, OWNER)
        assert time.monotonic() - start < 3.0
    with pytest.raises(StoreUnavailableError):
        await manager.get(second.response_id, OWNER)

    redis_server.start()  # empty (not persistent): only what is saved from now on is there
    raw = aioredis.Redis.from_url(redis_server.url(0))
    # A continuation flushes the buffer first (the background retry may have done it already).
    assert await manager.resolve(second.response_id, OWNER) == second
    assert not manager.pending and manager.num_pending_tokens == 0
    assert await set_calls(raw) == 1  # written once
    assert await raw.pttl(store.key(second.response_id)) > (STORE_TTL_LEASES * 10 - 1) * 1000
    with pytest.raises(ResponseNotFoundError):  # still the owner's alone
        await manager.resolve(second.response_id, "another owner")

    # Nobody asks this time: the background retry saves it when Redis is back.
    redis_server.stop()
    third = turn(second)
    assert await manager.save(third) is False
    redis_server.start()
    deadline = time.monotonic() + 10
    while manager.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not manager.pending
    await raw.aclose()
    raw = aioredis.Redis.from_url(redis_server.url(0))
    assert await set_calls(raw) == 1
    assert await manager.resolve(third.response_id, OWNER) == third
    assert manager.num_deferred == 2
    await raw.aclose()
    await manager.close()


async def test_retry_buffer_is_bounded(redis_server):
    manager = SessionManager(RedisStore(redis_server.url(0)), max_pending_records=2,
                             max_pending_tokens=100, retry_s=(60, 60))
    redis_server.stop()
    kept = [turn(num_tokens=40), turn(num_tokens=40)]
    for r in kept:
        assert await manager.save(r) is False
    with pytest.raises(StoreUnavailableError):  # a third record: over the record bound
        await manager.save(turn(num_tokens=1))
    assert list(manager.pending) == [r.response_id for r in kept]
    manager.max_pending_records = 10
    with pytest.raises(StoreUnavailableError):  # 80 + 21 tokens: over the token bound
        await manager.save(turn(num_tokens=21))
    assert await manager.save(turn(num_tokens=20)) is False
    assert manager.num_pending_tokens == 100 and manager.num_deferred == 3
    redis_server.start()
    await manager.close()  # one last flush on the way out
    assert not manager.pending

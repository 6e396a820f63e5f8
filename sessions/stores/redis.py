"""Session records in Redis, shared by every replica that points at the same server.

Key layout (one key per response, nothing else):

    agentspeed:resp:{response_id}  ->  msgspec-msgpack encoding of a ``ResponseRecord`` (a string)

written with ``SET key value PX <ttl ms>`` when a TTL is given, plain ``SET`` otherwise (which
also clears an earlier TTL, so an overwrite never inherits the old expiry). Redis expires keys
itself; ``get`` is one ``GET``, ``delete`` one ``DEL``, ``touch`` one pipelined ``PEXPIRE`` per
id (one round trip; a missing or expired key stays missing). ``key_prefix`` lets deployments that
share a Redis database keep apart (the default is ``agentspeed:resp:``).

Failure: connect and read timeouts are short and a command is retried once (a pooled connection
that died with a Redis restart is replaced on the retry), all inside ``op_timeout_s``; an
unreachable or timing-out Redis raises ``StoreUnavailableError`` so the request fails fast with
a 503. Nothing is cached here: when Redis comes back the next command reconnects by itself.
Durability is Redis's own (AOF/RDB settings of the server).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.record import ResponseRecord
from sessions.stores.base import SessionStore, StoreUnavailableError

logger = logging.getLogger(__name__)

# Transient by nature: Redis down, restarting, loading its dataset (BusyLoadingError is a
# ConnectionError), or a replica promoted mid-failover.
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, TimeoutError, OSError)


class RedisStore(SessionStore):
    """Response records in Redis at ``url`` (``redis://HOST:PORT/DB``, ``rediss://`` for TLS)."""

    def __init__(self, url: str, key_prefix: str = "agentspeed:resp:",
                 connect_timeout_s: float = 1.0, read_timeout_s: float = 1.0,
                 op_timeout_s: float = 2.5) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.op_timeout_s = op_timeout_s
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ResponseRecord)
        # No connection is made here; the pool connects on first use, on the running loop.
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout_s, socket_timeout=read_timeout_s,
            retry=Retry(NoBackoff(), 1), decode_responses=False)

    def key(self, response_id: str) -> str:
        return self.key_prefix + response_id

    async def _call(self, *args):
        try:
            async with asyncio.timeout(self.op_timeout_s):
                return await self._client.execute_command(*args)
        except _UNAVAILABLE as exc:
            logger.warning("Redis session store unreachable (%s): %s", args[0], exc)
            raise StoreUnavailableError(f"Redis session store unreachable: {exc}") from exc

    async def get(self, response_id: str) -> ResponseRecord | None:
        blob = await self._call("GET", self.key(response_id))
        if blob is None:
            return None
        try:
            return self._decoder.decode(blob)
        except msgspec.DecodeError:
            logger.warning("unreadable session record %s in Redis; treated as missing",
                           response_id)
            return None

    async def put(self, record: ResponseRecord, ttl_s: float | None) -> None:
        args = ["SET", self.key(record.response_id), self._encoder.encode(record)]
        if ttl_s is not None:
            args += ["PX", max(1, round(ttl_s * 1000))]
        await self._call(*args)

    async def touch(self, response_ids: list[str], ttl_s: float) -> int:
        if not response_ids:
            return 0
        ttl_ms = max(1, round(ttl_s * 1000))
        try:
            async with asyncio.timeout(self.op_timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    for response_id in response_ids:
                        pipe.pexpire(self.key(response_id), ttl_ms)
                    found = await pipe.execute()
        except _UNAVAILABLE as exc:
            logger.warning("Redis session store unreachable (PEXPIRE): %s", exc)
            raise StoreUnavailableError(f"Redis session store unreachable: {exc}") from exc
        return sum(bool(f) for f in found)

    async def delete(self, response_id: str) -> bool:
        return await self._call("DEL", self.key(response_id)) > 0

    async def close(self) -> None:
        await self._client.aclose()

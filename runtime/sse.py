"""Server-sent events of the Chat Completions and Completions streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from runtime.protocol.codec import encode_json

DONE = b"data: [DONE]\n\n"


def data(obj: Any) -> bytes:
    return b"data: " + encode_json(obj) + b"\n\n"


def error(exc: BaseException) -> bytes:
    """A mid-stream failure: the status is sent already, so the error goes as a chunk."""
    from runtime.guard import api_error_of

    err = api_error_of(exc)
    return data({"error": {"message": err.message, "type": err.type, "param": err.param,
                           "code": err.code}})


async def respond(stream: AsyncIterator[bytes]) -> StreamingResponse:
    """Start ``stream`` before answering: an error raised before its first chunk (a 429 from
    its generation slot) leaves as a status, and a client that goes away before the first
    chunk still finalises the started generator, which frees its slot."""
    first = await anext(stream)
    return StreamingResponse(_chain(first, stream), media_type="text/event-stream")


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk

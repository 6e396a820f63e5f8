"""What a session remembers of each response: the exact tokens, and who may continue it."""

from __future__ import annotations

import msgspec


class ResponseRecord(msgspec.Struct, kw_only=True):
    response_id: str  # "resp_" + at least 128 random bits
    owner: str  # fingerprint of the API key that created it ("" when auth is off)
    model: str
    created_at: float  # unix seconds
    token_ids: list[int]  # exact prompt + output (+ end-of-turn) the model has seen
    ends_with_end_of_turn: bool  # False for a `generate: false` preparation
    previous_response_id: str | None = None
    session_id: str = ""  # the chain's first response id: the engine pins KV under it
    instructions: str | None = None
    tools: list[dict] | None = None  # function tool specs {name, description, parameters}
    store: bool = True  # False: lives only for the connection (WebSocket) that made it
    response_json: bytes = b""  # the Response object as returned, for GET /v1/responses/{id}

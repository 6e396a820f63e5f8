"""What a session remembers of each response: the exact tokens, and who may continue it.

Compatibility: fields added after the first release carry defaults, so a record written by an
older server decodes (its ``last_used_at`` / ``lease_expires_at`` read 0, meaning unknown, and
its ``ancestor_ids`` empty); decoders ignore fields they do not know, so older servers read newer
records too.

Tools: a record keeps the full function specs, not just a fingerprint, because a continuation
that sends no ``tools`` inherits them (to render its new items and to constrain and parse the
calls it makes), and the store is the only place they survive a restart or a replica hop.
``tools_fingerprint`` stands beside them so that "same tools?" is a string compare.
"""

from __future__ import annotations

import hashlib
import json

import msgspec


class ResponseRecord(msgspec.Struct, kw_only=True):
    response_id: str  # "resp_" + at least 128 random bits
    owner: str  # fingerprint of the API key that created it ("" when auth is off)
    model: str
    created_at: float  # unix seconds, when the response was created
    token_ids: list[int]  # exact prompt + output (+ end-of-turn) the model has seen
    ends_with_end_of_turn: bool  # False for a `generate: false` preparation
    previous_response_id: str | None = None
    session_id: str = ""  # the chain's first response id: the engine pins KV under it
    instructions: str | None = None
    tools: list[dict] | None = None  # function tool specs {name, description, parameters}
    store: bool = True  # False: lives only for the connection (WebSocket) that made it
    response_json: bytes = b""  # the Response object as returned, for GET /v1/responses/{id}
    # Added later (defaults keep older records readable):
    last_used_at: float = 0.0  # unix seconds the turn finished and the record was written
    lease_expires_at: float = 0.0  # unix seconds: last_used_at + the session lease, the time
    # this turn's KV pin runs out unless a later turn renews it; 0 = unknown (older record)
    ancestor_ids: list[str] = []  # the chain before this response, oldest first
    tools_fingerprint: str = ""  # tools_fingerprint(tools); "" without tools


def tools_fingerprint(tools: list[dict] | None) -> str:
    """SHA-256 (hex) of the tools' canonical JSON (sorted keys, no spaces); "" for no tools.

    Key order and whitespace do not change it; any change to a name, description or parameter
    schema does, and so does the order of the tools (it changes the rendered prompt)."""
    if not tools:
        return ""
    canonical = json.dumps(tools, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()

"""Responses WebSocket mode: the client event envelope and the server's ``error`` event.

The client (``client.responses.connect()``) sends JSON text frames
``{"type": "response.create", ...ResponseCreateRequest fields..., "stream_id"?: lane}``;
``response.steer`` exists in the protocol but is not served. The server answers with the same
events as SSE (``response_events``), each echoing ``stream_id`` when the create named a lane, and
with ``WsErrorEvent`` for failures. See ``NOTES.md`` for what the openai client expects.
"""

from __future__ import annotations

import re

from msgspec import UNSET, Struct, UnsetType

from runtime.protocol.codec import decode_request
from runtime.protocol.errors import APIError, invalid
from runtime.protocol.responses import ResponseCreateRequest

# The openai client's lane helper accepts exactly these ids; so do we.
STREAM_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,256}")


class _Envelope(Struct):
    type: str
    stream_id: str | None = None


class _LaneOnly(Struct):
    stream_id: str | None = None


def decode_client_event(data: bytes | str) -> ResponseCreateRequest:
    """Decode one client frame; only ``response.create`` is served. Raises ``APIError`` (400)."""
    envelope = decode_request(data, _Envelope)
    if envelope.type != "response.create":
        what = "is not supported by this server" if envelope.type == "response.steer" \
            else "is not a known client event"
        raise invalid(f"Event type '{envelope.type}' {what}.", "type", "unsupported_event_type")
    if envelope.stream_id is not None and not STREAM_ID_PATTERN.fullmatch(envelope.stream_id):
        raise invalid("'stream_id' must be 1-256 ASCII letters, digits, '_', '-' or '.'.",
                      "stream_id", "invalid_stream_id")
    return decode_request(data, ResponseCreateRequest)


def lane_of(data: bytes | str) -> str | None:
    """Best-effort lane of a frame that failed to decode, to route its error; never raises."""
    try:
        lane = decode_request(data, _LaneOnly).stream_id
    except APIError:
        return None
    return lane if lane is not None and STREAM_ID_PATTERN.fullmatch(lane) else None


class WsErrorDetail(Struct, kw_only=True):
    type: str  # an ErrorType: "invalid_request_error", "not_found_error", ...
    code: str | None
    message: str
    param: str | None


class WsErrorEvent(Struct, tag_field="type", tag="error", kw_only=True):
    """``{"type": "error", "status": 400, "error": {...}}``; ends the lane's current response."""

    status: int  # the HTTP status the same failure would have had
    error: WsErrorDetail
    stream_id: str | UnsetType = UNSET  # set when the failing create named a lane
    sequence_number: int | UnsetType = UNSET  # set when a started response fails mid-stream


def ws_error_event(err: APIError, stream_id: str | None = None,
                   sequence_number: int | None = None) -> WsErrorEvent:
    return WsErrorEvent(
        status=err.status,
        error=WsErrorDetail(type=err.type, code=err.code, message=err.message, param=err.param),
        stream_id=UNSET if stream_id is None else stream_id,
        sequence_number=UNSET if sequence_number is None else sequence_number,
    )

"""Responses WebSocket mode: ``response.create`` frames in, response events out, per lane.

Each ``stream_id`` is a lane holding at most one response in flight (a second create on a busy
lane gets ``response_already_in_flight``); lanes run concurrently and their events interleave,
each tagged with its lane. Errors go to the lane that caused them, so a lane never hangs.
Closing the socket cancels its responses, which aborts them in the engine and frees their KV.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from runtime import responses
from runtime.app import api_key_of, check_key, owner
from runtime.guard import api_error_of
from runtime.protocol.codec import encode_json
from runtime.protocol.errors import APIError, error_body, invalid, rate_limited
from runtime.protocol.websocket import decode_client_event, lane_of, ws_error_event
from runtime.state import ServerState
from sessions.stores.memory import MemoryStore

logger = logging.getLogger(__name__)
_MAX_ACTIVE = 16  # responses in flight per connection, as the openai client documents


async def _deny(websocket: WebSocket, err: APIError) -> None:
    """Refuse the upgrade with an HTTP status (or a policy close where that is unsupported)."""
    try:
        await websocket.send_denial_response(JSONResponse(error_body(err), err.status))
    except RuntimeError:
        await websocket.close(code=1008, reason=err.message[:120])


async def serve_socket(state: ServerState, websocket: WebSocket) -> None:
    try:
        check_key(state.config, api_key_of(websocket.headers))
    except APIError as err:
        await _deny(websocket, err)
        return
    if state.connections >= state.config.max_connections:
        await _deny(websocket, rate_limited("Too many open WebSocket connections.",
                                            "websocket_connection_limit_reached"))
        return
    await websocket.accept()
    state.connections += 1
    state.metrics.connections.set(state.connections)
    conn = _Connection(state, websocket, owner(state.config, websocket.headers))
    try:
        await conn.receive_loop()
    finally:
        await conn.close()
        state.connections -= 1
        state.metrics.connections.set(state.connections)


class _Connection:
    def __init__(self, state: ServerState, websocket: WebSocket, owner_tag: str) -> None:
        self.state = state
        self.websocket = websocket
        self.owner = owner_tag
        self.local = MemoryStore(max_records=1024)  # store=false records of this connection
        self.lanes: dict[str, asyncio.Task] = {}
        self.send_lock = asyncio.Lock()
        self.open = True
        self._max_lanes = state.config.max_lanes_per_connection

    async def send(self, event) -> None:
        if not self.open:
            return
        async with self.send_lock:
            try:
                await self.websocket.send_text(encode_json(event).decode())
            except (WebSocketDisconnect, RuntimeError):
                self.open = False

    async def receive_loop(self) -> None:
        limit = self.state.config.max_body_bytes
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if len(data) > limit:
                await self.send(ws_error_event(APIError(
                    413, f"Frame exceeds {limit} bytes.", code="request_too_large"),
                    lane_of(data[:4096]) if isinstance(data, str) else None))
                continue
            try:
                request = decode_client_event(data)
            except APIError as err:
                await self.send(ws_error_event(err, lane_of(data)))
                continue
            self._start(request)

    def _start(self, request) -> None:
        lane = request.stream_id or ""
        busy = self.lanes.get(lane)
        err = None
        if busy is not None and not busy.done():
            err = invalid(f"A response is already in flight on lane '{lane or 'default'}'.",
                          "stream_id", "response_already_in_flight")
        elif sum(not t.done() for t in self.lanes.values()) >= _MAX_ACTIVE:
            err = invalid("Too many responses in flight on this connection.", None,
                          "websocket_stream_limit_reached")
        elif lane not in self.lanes and len(self.lanes) > self._max_lanes:
            err = invalid("Too many lanes on this connection.", "stream_id",
                          "websocket_stream_limit_reached")
        if err is not None:
            asyncio.ensure_future(self.send(ws_error_event(err, request.stream_id)))
            return
        self.lanes[lane] = asyncio.create_task(self._run(request))

    async def _run(self, request) -> None:
        try:
            turn = await responses.prepare(self.state, request, self.owner, self.local)
        except Exception as exc:  # validation: an error event on this lane, socket stays open
            await self.send(ws_error_event(api_error_of(exc), request.stream_id))
            return
        try:
            async for event in responses.run(self.state, turn, request.stream_id, self.local):
                await self.send(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.send(ws_error_event(api_error_of(exc), request.stream_id))

    async def close(self) -> None:
        self.open = False
        tasks = [t for t in self.lanes.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

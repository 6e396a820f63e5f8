"""``/v1/responses`` over HTTP (JSON or SSE): one turn of a session, and GET / DELETE by id.

A continuation (``previous_response_id``) is the previous turn's exact tokens plus the rendering
of only the new input items, so the whole history is a cache hit whatever the chat template
would re-render. A finished turn stores its tokens (prompt + output + end-of-turn).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
from fastapi.responses import Response, StreamingResponse

from engine.sampling_params import SamplingParams
from engine.session_pins import RETENTION_NORMAL, RETENTION_TOOL_WAIT, SessionHint
from runtime import convert
from runtime.generation import Finished, generate
from runtime.guard import api_error_of, check_model, generation_slot, sampling_for_tools
from runtime.protocol import responses as r
from runtime.protocol.codec import decode_request, encode_json
from runtime.protocol.errors import APIError, invalid, not_found
from runtime.protocol.response_events import ErrorEvent
from runtime.response_stream import ResponseStream
from runtime.state import ServerState
from sessions.manager import ResponseNotFoundError, new_response_id
from sessions.record import ResponseRecord, tools_fingerprint
from sessions.stores.memory import MemoryStore
from tools.parsers.base import ToolCallParser
from tools.render import RenderError


@dataclass
class Turn:
    request: r.ResponseCreateRequest
    response_id: str
    owner: str
    prompt_ids: list[int]
    params: SamplingParams
    parser: ToolCallParser | None
    tools: list[dict]
    session_id: str  # the chain's first response id; the engine pins KV under it
    ancestor_ids: list[str]  # the chain before this response, oldest first


async def prepare(state: ServerState, request: r.ResponseCreateRequest, owner: str,
                  local: MemoryStore | None = None) -> Turn:
    """Validate and render one turn; raises ``APIError`` before anything runs."""
    check_model(state, request.model)
    tools = convert.response_tools(request)
    generate_now = bool(request.generate)
    response_id = new_response_id()
    session_id = response_id
    ancestor_ids: list[str] = []
    try:
        if request.previous_response_id:
            try:
                prev = await state.sessions.resolve(request.previous_response_id, owner, local)
            except ResponseNotFoundError as exc:
                raise api_error_of(exc) from None
            tools = tools or list(prev.tools or [])
            session_id = prev.session_id or prev.response_id
            ancestor_ids = [*prev.ancestor_ids, prev.response_id]
            messages = convert.response_messages(request, with_instructions=False)
            prompt_ids = prev.token_ids + state.renderer.render_continuation(
                messages, tools or None, after_end_of_turn=prev.ends_with_end_of_turn,
                add_generation_prompt=generate_now)
        else:
            messages = convert.response_messages(request, with_instructions=True)
            if not messages:
                raise invalid("Provide 'input' (or 'instructions' with generate=false).",
                              "input", "missing_required_parameter")
            prompt_ids = state.renderer.render(messages, tools or None,
                                               add_generation_prompt=generate_now)
    except RenderError as exc:
        raise invalid(str(exc), "input") from None
    params = convert.response_sampling(request)
    choice = request.tool_choice or "auto"
    choice_name = choice if isinstance(choice, str) else "function:" + choice.name
    fmt = request.text.format if request.text else None
    response_format = None
    if isinstance(fmt, r.FormatJSONObject):
        response_format = ("json_object", None)
    elif isinstance(fmt, r.FormatJSONSchema):
        response_format = ("json_schema", fmt.schema)
    strict = any(t.strict for t in request.tools)
    params, parser = sampling_for_tools(state, params, tools, choice_name, response_format,
                                        strict, bool(request.parallel_tool_calls))
    if not generate_now:
        params = SamplingParams(max_tokens=1, temperature=0.0)  # prefill only; output dropped
    convert.check_fits(state, prompt_ids, params, "input", "max_output_tokens")
    return Turn(request, response_id, owner, prompt_ids, params, parser, tools, session_id,
                ancestor_ids)


async def run(state: ServerState, turn: Turn, stream_id: str | None = None,
              local: MemoryStore | None = None) -> AsyncIterator[msgspec.Struct]:
    """Events of one turn, ending in completed / incomplete / failed; saves the session.

    Raises ``APIError`` for what the client must fix or retry rather than failing the response:
    429 before any event when the server is at its generation limit, and a 4xx the engine finds
    (a schema it cannot compile) after ``response.in_progress``. Only server-side failures end as
    ``response.failed``.
    """
    async with generation_slot(state, "responses"):
        response = r.Response.start(turn.request, response_id=turn.response_id,
                                    model=state.model_name, created_at=int(time.time()))
        stream = ResponseStream(response, stream_id,
                                state.tokenizer if turn.request.wants_logprobs else None)
        for event in stream.start():
            yield event
        start = time.monotonic()
        final: Finished | None = None
        try:
            hint = SessionHint(turn.session_id, state.config.lease_s, RETENTION_NORMAL)
            events = generate(state.engine, state.tokenizer, turn.response_id, turn.prompt_ids,
                              turn.params, turn.parser if turn.request.generate else None,
                              hint, state.cache_salt(turn.owner))
            async for event in events:
                if isinstance(event, Finished):
                    final = event
                elif turn.request.generate:
                    for out in stream.on(event):
                        yield out
        except Exception as exc:
            err = api_error_of(exc)
            state.metrics.requests.labels("responses", "error").inc()
            if err.status < 500:
                if err.param == "response_format":  # the engine's name for it
                    err = APIError(err.status, err.message, err.type, "text.format", err.code)
                raise err from None
            for out in stream.fail(err.message):
                yield out
            return
        assert final is not None
        if not turn.request.generate:  # a preparation: nothing generated as clients see it
            final = Finished([], "", [], "stop", final.prompt_tokens, final.cached_tokens)
        if final.tool_calls:  # the agent now runs a tool: keep its session's KV above others
            await state.engine.touch_session(turn.session_id, retention=RETENTION_TOOL_WAIT)
        done = stream.finish(final)
        # Saved before "completed" leaves: a client that saw it can continue the chain even if
        # this process dies right after. While the store is down the finished turn is delivered
        # anyway and its record waits in the session manager's retry buffer (continuable once
        # written); only a full buffer raises StoreUnavailableError (a 503).
        await save(state, turn, final, response, local)
        # Counted before "completed" leaves too: a client that saw it finds it in /metrics.
        state.metrics.requests.labels("responses", "ok").inc()
        state.metrics.observe_finished(final, start, time.monotonic())
        for out in done:
            yield out


async def save(state: ServerState, turn: Turn, final: Finished, response: r.Response,
               local: MemoryStore | None) -> bool:
    """Record the finished turn; False when its save waits for the store (see SessionManager)."""
    tokens = turn.prompt_ids + final.output_ids
    ends = bool(turn.request.generate)
    eot = state.renderer.end_of_turn_id
    if ends and (not final.output_ids or final.output_ids[-1] != eot):
        tokens.append(eot)  # cut by length or a stop string: close the turn as the template does
    now = time.time()
    record = ResponseRecord(
        response_id=turn.response_id, owner=turn.owner, model=state.model_name,
        created_at=float(response.created_at), token_ids=tokens, ends_with_end_of_turn=ends,
        previous_response_id=turn.request.previous_response_id, session_id=turn.session_id,
        instructions=turn.request.instructions, tools=turn.tools or None,
        store=bool(turn.request.store), response_json=encode_json(response),
        last_used_at=now, lease_expires_at=now + state.config.lease_s,
        ancestor_ids=turn.ancestor_ids, tools_fingerprint=tools_fingerprint(turn.tools))
    return await state.sessions.save(record, local)


# ---------------------------------------------------------------------------------- HTTP
async def handle_http(state: ServerState, body: bytes, owner: str) -> Response:
    request = decode_request(body, r.ResponseCreateRequest)
    if request.stream_id is not None:
        raise invalid("stream_id is only meaningful over the WebSocket", "stream_id")
    turn = await prepare(state, request, owner)
    if request.stream:
        events = run(state, turn)
        first = await anext(events)  # a 429 leaves as a status, before the stream starts
        return StreamingResponse(_sse(first, events), media_type="text/event-stream")
    last = None
    async for event in run(state, turn):
        last = event
    response = last.response
    if response.status == "failed":
        raise APIError(500, response.error.message, "server_error", None, "server_error")
    return Response(encode_json(response), media_type="application/json")


def _sse_frame(event: msgspec.Struct) -> bytes:
    kind = type(event).__struct_config__.tag
    return b"event: " + kind.encode() + b"\ndata: " + encode_json(event) + b"\n\n"


async def _sse(first: msgspec.Struct, events: AsyncIterator[msgspec.Struct]
               ) -> AsyncIterator[bytes]:
    yield _sse_frame(first)
    seq = first.sequence_number + 1
    try:
        async for event in events:
            seq = event.sequence_number + 1
            yield _sse_frame(event)
    except Exception as exc:  # e.g. the session store went away: end with an error event
        err = api_error_of(exc)
        event = ErrorEvent(sequence_number=seq, message=err.message, code=err.code,
                           param=err.param)
        yield b"event: error\ndata: " + encode_json(event) + b"\n\n"


async def get(state: ServerState, response_id: str, owner: str) -> Response:
    try:
        record = await state.sessions.get(response_id, owner)
    except ResponseNotFoundError:
        raise not_found(f"Response with id '{response_id}' not found.", "response_id") from None
    return Response(record.response_json, media_type="application/json")


async def delete(state: ServerState, response_id: str, owner: str) -> Response:
    try:
        record = await state.sessions.delete(response_id, owner)
        await state.engine.close_session(record.session_id or record.response_id)
    except ResponseNotFoundError:
        raise not_found(f"Response with id '{response_id}' not found.", "response_id") from None
    return Response(encode_json(r.ResponseDeleted(id=response_id)),
                    media_type="application/json")


"""``POST /v1/chat/completions``: streaming (SSE) and not, with tool calls and usage."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

from fastapi.responses import Response

from runtime import convert, sse
from runtime.choices import Choices
from runtime.generation import Finished
from runtime.guard import (
    check_generation_count,
    check_model,
    generation_slot,
    sampling_for_tools,
)
from runtime.logprobs import ContentLogprobs, chat_logprobs
from runtime.protocol import chat as t
from runtime.protocol.codec import decode_request, encode_json
from runtime.state import ServerState
from tools.parsers.base import TextDelta, ToolCallArgsDelta, ToolCallStart


async def handle(state: ServerState, body: bytes, owner: str = "") -> Response:
    request = decode_request(body, t.ChatCompletionRequest)
    check_model(state, request.model)
    n = request.n or 1
    check_generation_count(state, n, "n")
    messages = convert.chat_messages(request)
    tools = convert.chat_tools(request)
    choice = request.tool_choice or ("auto" if tools else "none")
    params = convert.chat_sampling(request, state.ready.vocab_size)
    strict = any(t.function.strict for t in request.tools or [])
    params, parser = sampling_for_tools(state, params, tools, _choice_name(choice),
                                        _response_format(request), strict,
                                        request.parallel_tool_calls is not False)
    prompt_ids = convert.render_chat(state, messages, tools if choice != "none" else [])
    convert.check_fits(state, prompt_ids, params, "messages",
                       "max_completion_tokens" if request.max_completion_tokens else "max_tokens")
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    choices = Choices(state, completion_id, [prompt_ids], params, n, parser,
                      state.cache_salt(owner))
    if request.stream:
        return await sse.respond(_stream(state, request, completion_id, choices))
    async with generation_slot(state, "chat", n):
        async for _ in choices.events():
            pass
    state.metrics.requests.labels("chat", "ok").inc()
    return Response(encode_json(_completion(state, request, completion_id, choices)),
                    media_type="application/json")


def _choice_name(choice) -> str:
    if isinstance(choice, str):
        return choice
    return "function:" + choice.function.name


def _response_format(request: t.ChatCompletionRequest):
    fmt = request.response_format
    if isinstance(fmt, t.ResponseFormatJSONObject):
        return ("json_object", None)
    if isinstance(fmt, t.ResponseFormatJSONSchema):
        return ("json_schema", fmt.json_schema.schema or {})
    return None


def _finish_reason(final: Finished) -> str:
    if final.tool_calls and final.finish_reason == "stop":
        return "tool_calls"
    return "length" if final.finish_reason == "length" else "stop"


def _completion(state: ServerState, request, completion_id: str, choices: Choices):
    out = []
    for index in range(len(choices)):
        final = choices.finals[index]
        calls = [t.ToolCall(id=c.call_id,
                            function=t.FunctionCall(name=c.name, arguments=c.arguments))
                 for c in final.tool_calls]
        message = t.ChatCompletionMessage(content=final.text if final.text or not calls
                                          else None)
        if calls:
            message.tool_calls = calls
        logprobs = chat_logprobs(state.tokenizer, final.logprobs) if request.logprobs else None
        out.append(t.Choice(index=index, message=message, finish_reason=_finish_reason(final),
                            logprobs=logprobs))
    return t.ChatCompletion(id=completion_id, created=int(time.time()), model=state.model_name,
                            choices=out, usage=choices.usage())


async def _stream(state, request, completion_id, choices: Choices) -> AsyncIterator[bytes]:
    """SSE chunks of one completion's ``n`` choices, interleaved as their tokens come; holds
    the request's generation slots from its first chunk to its end."""
    n = len(choices)
    slot = generation_slot(state, "chat", n)
    await slot.__aenter__()
    created, model = int(time.time()), state.model_name
    include_usage = request.include_usage

    def chunk(index: int, delta: t.ChoiceDelta, finish=None, logprobs=None) -> bytes:
        c = t.ChatCompletionChunk(
            id=completion_id, created=created, model=model,
            choices=[t.ChunkChoice(index=index, delta=delta, finish_reason=finish,
                                   logprobs=logprobs)])
        if include_usage:
            c.usage = None
        return sse.data(c)

    events, matched = choices.events(), ContentLogprobs(keep_tool_calls=True)
    try:
        for index in range(n):
            yield chunk(index, t.ChoiceDelta(role="assistant", content=""))
        async for index, event in events:
            taken = matched.on(index, event)
            logprobs = (chat_logprobs(state.tokenizer, taken)
                        if request.logprobs and taken is not None else None)
            if isinstance(event, TextDelta):
                yield chunk(index, t.ChoiceDelta(content=event.text), logprobs=logprobs)
            elif isinstance(event, ToolCallStart):
                yield chunk(index, t.ChoiceDelta(tool_calls=[t.DeltaToolCall(
                    index=event.index, id=event.call_id, type="function",
                    function=t.DeltaFunction(name=event.name, arguments=""))]), logprobs=logprobs)
            elif isinstance(event, ToolCallArgsDelta):
                yield chunk(index, t.ChoiceDelta(tool_calls=[t.DeltaToolCall(
                    index=event.index, function=t.DeltaFunction(arguments=event.delta))]),
                            logprobs=logprobs)
            elif isinstance(event, Finished):
                if choices.done:
                    # Counted before the last chunks leave: a client that saw them finds it
                    # in /metrics.
                    state.metrics.requests.labels("chat", "ok").inc()
                yield chunk(index, t.ChoiceDelta(), _finish_reason(event), logprobs)
        if include_usage:
            last = t.ChatCompletionChunk(id=completion_id, created=created, model=model,
                                         choices=[], usage=choices.usage())
            yield sse.data(last)
    except Exception as exc:  # mid-stream: the status is sent already, so an error chunk
        state.metrics.requests.labels("chat", "error").inc()
        yield sse.error(exc)
    finally:
        await events.aclose()  # cancels choices still running (client gone, an error)
        await slot.__aexit__(None, None, None)
    yield sse.DONE

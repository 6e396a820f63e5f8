"""``POST /v1/completions``: text in, text out, for each prompt ``n`` choices; streamed (SSE)
or not, with ``echo``, ``logprobs`` and usage.

Choice ``index`` is ``prompt number * n + choice number``, as OpenAI numbers them; every choice
is its own engine request (``runtime.choices``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

from fastapi.responses import Response

from runtime import convert, sse
from runtime.choices import Choices
from runtime.generation import Finished
from runtime.guard import check_generation_count, check_model, generation_slot
from runtime.logprobs import ContentLogprobs, completion_logprobs
from runtime.protocol import completions as t
from runtime.protocol.codec import decode_request, encode_json
from runtime.state import ServerState
from tools.parsers.base import TextDelta

ENDPOINT = "completions"


async def handle(state: ServerState, body: bytes, owner: str = "") -> Response:
    request = decode_request(body, t.CompletionRequest)
    check_model(state, request.model)
    prompts = convert.completion_prompts(request, state.tokenizer, state.ready.vocab_size)
    n = request.num_choices
    check_generation_count(state, len(prompts) * n, "n" if len(prompts) == 1 else "prompt")
    params = convert.completion_sampling(request, state.ready.vocab_size)
    for i, (prompt_ids, _) in enumerate(prompts):
        convert.check_fits(state, prompt_ids, params,
                           "prompt" if len(prompts) == 1 else f"prompt[{i}]", "max_tokens")
    completion_id = "cmpl-" + secrets.token_hex(12)
    choices = Choices(state, completion_id, [ids for ids, _ in prompts], params, n,
                      cache_salt=state.cache_salt(owner))
    echoes = [text if request.echo else "" for _, text in prompts for _ in range(n)]
    if request.stream:
        return await sse.respond(_stream(state, request, completion_id, choices, echoes))
    async with generation_slot(state, ENDPOINT, len(choices)):
        async for _ in choices.events():
            pass
    state.metrics.requests.labels(ENDPOINT, "ok").inc()
    out = []
    for i, echo in enumerate(echoes):
        final = choices.finals[i]
        logprobs = (completion_logprobs(state.tokenizer, final.logprobs or [], len(echo))
                    if request.logprobs is not None else None)
        out.append(t.CompletionChoice(index=i, text=echo + final.text, logprobs=logprobs,
                                      finish_reason=_finish_reason(final)))
    completion = t.Completion(id=completion_id, created=int(time.time()),
                              model=state.model_name, choices=out, usage=choices.usage())
    return Response(encode_json(completion), media_type="application/json")


def _finish_reason(final: Finished) -> str:
    return "length" if final.finish_reason == "length" else "stop"


async def _stream(state: ServerState, request: t.CompletionRequest, completion_id: str,
                  choices: Choices, echoes: list[str]) -> AsyncIterator[bytes]:
    """SSE chunks, one choice's text each, interleaved as the choices' tokens come, each with
    the logprobs of its tokens when asked for; a choice's last chunk carries its finish
    reason."""
    slot = generation_slot(state, ENDPOINT, len(choices))
    await slot.__aenter__()
    created, model, include_usage = int(time.time()), state.model_name, request.include_usage

    def chunk(index: int, text: str, finish=None, logprobs=None) -> bytes:
        c = t.Completion(id=completion_id, created=created, model=model,
                         choices=[t.CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                     finish_reason=finish)])
        if include_usage:
            c.usage = None
        return sse.data(c)

    events, matched = choices.events(), ContentLogprobs(keep_tool_calls=True)
    offsets = [len(echo) for echo in echoes]  # where each choice's next token starts

    def logprobs_of(index: int, taken) -> t.CompletionLogprobs | None:
        if request.logprobs is None or taken is None:
            return None
        out = completion_logprobs(state.tokenizer, taken, offsets[index])
        offsets[index] += sum(len(token) for token in out.tokens)
        return out

    try:
        for index, echo in enumerate(echoes):
            if echo:
                yield chunk(index, echo)
        if not any(echoes):
            yield b": started\n\n"  # an SSE comment: the response starts before any token
        async for index, event in events:
            logprobs = logprobs_of(index, matched.on(index, event))
            if isinstance(event, TextDelta):
                yield chunk(index, event.text, logprobs=logprobs)
            elif isinstance(event, Finished):
                if choices.done:
                    state.metrics.requests.labels(ENDPOINT, "ok").inc()
                yield chunk(index, "", _finish_reason(event), logprobs)
        if include_usage:
            last = t.Completion(id=completion_id, created=created, model=model, choices=[],
                                usage=choices.usage())
            yield sse.data(last)
    except Exception as exc:  # mid-stream: the status is sent already, so an error chunk
        state.metrics.requests.labels(ENDPOINT, "error").inc()
        yield sse.error(exc)
    finally:
        await events.aclose()
        await slot.__aexit__(None, None, None)
    yield sse.DONE

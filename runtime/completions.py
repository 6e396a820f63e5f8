"""``POST /v1/completions``: text in, text out, for each prompt ``n`` choices; streamed (SSE)
or not, with ``echo``, ``logprobs`` and usage.

Choice ``index`` is ``prompt number * n + choice number``, as OpenAI numbers them; every choice
is its own engine request (``runtime.choices``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response

from engine.outputs import TokenLogprob
from runtime import convert, sse
from runtime.choices import Choices
from runtime.generation import Finished
from runtime.guard import check_generation_count, generation_slot
from runtime.logprobs import ContentLogprobs, token_text
from runtime.protocol import completions as t
from runtime.protocol.codec import decode_request, encode_json
from runtime.protocol.errors import not_found
from runtime.state import ServerState
from tools.parsers.base import TextDelta

ENDPOINT = "completions"


async def handle(state: ServerState, body: bytes, owner: str = "") -> Response:
    request = decode_request(body, t.CompletionRequest)
    if not state.accepts_model(request.model):
        raise not_found(f"The model '{request.model}' does not exist.", "model",
                        "model_not_found")
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
    events = choices.events()
    echoes = [text if request.echo else "" for _, text in prompts for _ in range(n)]
    if request.stream:
        return await sse.respond(_stream(state, request, completion_id, choices, events,
                                         echoes))
    finals: dict[int, Finished] = {}
    async with generation_slot(state, ENDPOINT, len(echoes)):
        start = time.monotonic()
        async for index, event in events:
            if isinstance(event, Finished):
                finals[index] = event
                state.metrics.observe_finished(event, start, time.monotonic())
    state.metrics.requests.labels(ENDPOINT, "ok").inc()
    out = [
        t.CompletionChoice(index=i, text=echoes[i] + finals[i].text,
                           logprobs=_logprobs(state, request, finals[i], echoes[i]),
                           finish_reason=_finish_reason(finals[i]))
        for i in range(len(echoes))]
    completion = t.Completion(id=completion_id, created=int(time.time()),
                              model=state.model_name, choices=out,
                              usage=choices.usage([finals[i] for i in range(len(echoes))]))
    return Response(encode_json(completion), media_type="application/json")


def _finish_reason(final: Finished) -> str:
    return "length" if final.finish_reason == "length" else "stop"


def _logprobs(state: ServerState, request: t.CompletionRequest, final: Finished,
              echo: str) -> t.CompletionLogprobs | None:
    if request.logprobs is None:
        return None
    return completion_logprobs(state.tokenizer, final.logprobs or [], len(echo))


def completion_logprobs(tokenizer: Any, logprobs: list[TokenLogprob],
                        offset: int) -> t.CompletionLogprobs:
    """The legacy shape: parallel lists, alternatives as {token text: logprob} (the sampled
    token always among them), offsets counted in characters from ``offset`` (a streamed
    chunk's continue where the choice's previous chunk's ended)."""
    out = t.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for lp in logprobs:
        text, _ = token_text(tokenizer, lp.token_id)
        top = {token_text(tokenizer, token_id)[0]: value for token_id, value in lp.top}
        top.setdefault(text, lp.logprob)
        out.tokens.append(text)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)
    return out


async def _stream(state: ServerState, request: t.CompletionRequest, completion_id: str,
                  choices: Choices, events, echoes: list[str]) -> AsyncIterator[bytes]:
    """SSE chunks, one choice's text each, interleaved as the choices' tokens come, each with
    the logprobs of its tokens when asked for; a choice's last chunk carries its finish
    reason."""
    slot = generation_slot(state, ENDPOINT, len(echoes))
    await slot.__aenter__()
    created, model, include_usage = int(time.time()), state.model_name, request.include_usage

    def chunk(index: int, text: str, finish=None, logprobs=None) -> bytes:
        c = t.Completion(id=completion_id, created=created, model=model,
                         choices=[t.CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                     finish_reason=finish)])
        if include_usage:
            c.usage = None
        return sse.data(c)

    try:
        for index, echo in enumerate(echoes):
            if echo:
                yield chunk(index, echo)
        if not any(echoes):
            yield b": started\n\n"  # an SSE comment: the response starts before any token
        start, finals, matched = time.monotonic(), {}, ContentLogprobs(keep_tool_calls=True)
        offsets = [len(echo) for echo in echoes]  # where each choice's next token starts

        def logprobs_of(index: int, taken) -> t.CompletionLogprobs | None:
            if request.logprobs is None or taken is None:
                return None
            out = completion_logprobs(state.tokenizer, taken, offsets[index])
            offsets[index] += sum(len(token) for token in out.tokens)
            return out

        async for index, event in events:
            logprobs = logprobs_of(index, matched.on(index, event))
            if isinstance(event, TextDelta):
                yield chunk(index, event.text, logprobs=logprobs)
            elif isinstance(event, Finished):
                finals[index] = event
                state.metrics.observe_finished(event, start, time.monotonic())
                if len(finals) == len(echoes):
                    state.metrics.requests.labels(ENDPOINT, "ok").inc()
                yield chunk(index, "", _finish_reason(event), logprobs)
        if include_usage:
            usage = choices.usage([finals[i] for i in range(len(echoes))])
            last = t.Completion(id=completion_id, created=created, model=model, choices=[],
                                usage=usage)
            yield sse.data(last)
    except Exception as exc:  # mid-stream: the status is sent already, so an error chunk
        state.metrics.requests.labels(ENDPOINT, "error").inc()
        yield sse.error(exc)
    finally:
        await events.aclose()
        await slot.__aexit__(None, None, None)
    yield sse.DONE

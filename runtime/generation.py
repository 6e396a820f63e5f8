"""One generation as the protocol handlers see it: tokens in, text and tool-call events out.

Both Chat Completions and Responses (HTTP, SSE and WebSocket) drive this: it streams a request
through the engine, detokenizes, applies stop strings and runs the tool-call parser, and ends with
a ``Finished`` event that carries the exact output tokens, usage and the finish reason.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import TokenLogprob
from engine.sampling_params import SamplingParams
from engine.session_pins import SessionHint
from runtime.engine_client import EngineClient
from tools.parsers.base import (
    ParserEvent,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallParser,
    ToolCallStart,
)


@dataclass
class ToolCall:
    call_id: str
    name: str
    arguments: str  # the JSON text the model wrote


@dataclass
class Finished:
    output_ids: list[int]  # every generated token, end-of-turn included when sampled
    text: str  # content text (tool-call markup removed)
    tool_calls: list[ToolCall]
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    cached_tokens: int
    logprobs: list[TokenLogprob] | None = None
    first_token_time: float | None = None  # monotonic time of the first token (for TTFT)

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids)


@dataclass
class LogprobsDelta:
    """The log-probabilities of the tokens a step added, sent just before the text events
    those tokens produced (their text may come later: the detokenizer holds back a partial
    character or a possible stop string). Only when the request asked for logprobs."""

    logprobs: list[TokenLogprob]


@dataclass
class _State:
    text: list[str] = field(default_factory=list)
    calls: dict[int, ToolCall] = field(default_factory=dict)


GenerationEvent = (TextDelta | ToolCallStart | ToolCallArgsDelta | ToolCallEnd | LogprobsDelta
                   | Finished)


async def generate(
    engine: EngineClient,
    tokenizer,
    request_id: str,
    prompt_ids: list[int],
    params: SamplingParams,
    parser: ToolCallParser | None,
    session: SessionHint | None = None,
    cache_salt: str = "",
) -> AsyncIterator[GenerationEvent]:
    """Yield parser events as text forms, then one ``Finished``; raises ``EngineError``."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, params)
    state = _State()
    output_ids: list[int] = []
    logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
    finish, cached, first_token_time = None, 0, None
    async for out in engine.generate(request_id, prompt_ids, params, session, cache_salt):
        if out.new_token_ids and first_token_time is None:
            first_token_time = time.monotonic()
        cached = out.num_cached_tokens
        num_taken = detok.add_tokens(out.new_token_ids)  # fewer past a stop string
        output_ids.extend(out.new_token_ids[:num_taken])
        if logprobs is not None and out.logprobs and num_taken:
            logprobs.extend(out.logprobs[:num_taken])
            yield LogprobsDelta(out.logprobs[:num_taken])
        finish = "stop" if detok.stopped else out.finish_reason
        if finish is not None:
            detok.flush()
        delta = detok.take_delta(final=finish is not None)
        for event in _parse(parser, delta, finish is not None):
            _record(state, event)
            yield event
        if finish is not None:
            break  # leaving the engine stream early (stop string) aborts it there
    assert finish is not None, "engine stream ended without a finish reason"
    calls = [state.calls[i] for i in sorted(state.calls)]
    yield Finished(output_ids, "".join(state.text), calls, finish, len(prompt_ids), cached,
                   logprobs, first_token_time)


def _parse(parser: ToolCallParser | None, delta: str, final: bool) -> list[ParserEvent]:
    if parser is None:
        return [TextDelta(delta)] if delta else []
    events = parser.feed(delta) if delta else []
    if final:
        events += parser.finish()
    return [e for e in events if not (isinstance(e, TextDelta) and not e.text)]


def _record(state: _State, event: ParserEvent) -> None:
    if isinstance(event, TextDelta):
        state.text.append(event.text)
    elif isinstance(event, ToolCallStart):
        state.calls[event.index] = ToolCall(event.call_id, event.name, "")
    elif isinstance(event, ToolCallEnd):
        state.calls[event.index].arguments = event.arguments

"""Token log-probabilities in the wire shapes of Chat Completions, Completions and Responses,
and the matcher that gives streamed logprobs to the chunks their tokens produced."""

from __future__ import annotations

from typing import Any

from engine.outputs import TokenLogprob
from runtime.protocol import chat as t
from runtime.protocol import completions as c
from runtime.protocol import response_events as ev
from runtime.protocol import responses as r


def token_text(tokenizer: Any, token_id: int) -> tuple[str, list[int]]:
    text = tokenizer.decode([token_id])
    return text, list(text.encode("utf-8"))


def _decoded(tokenizer: Any, lp: TokenLogprob
             ) -> tuple[str, list[int], list[tuple[str, list[int], float]]]:
    """A token's text and UTF-8 bytes, and its alternatives' (text, bytes, logprob)."""
    text, raw = token_text(tokenizer, lp.token_id)
    return text, raw, [(*token_text(tokenizer, token_id), value) for token_id, value in lp.top]


def chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob] | None) -> t.ChoiceLogprobs:
    content = []
    for lp in logprobs or []:
        text, raw, top = _decoded(tokenizer, lp)
        content.append(t.TokenLogprob(
            token=text, logprob=lp.logprob, bytes=raw,
            top_logprobs=[t.TopLogprob(token=a, logprob=v, bytes=b) for a, b, v in top]))
    return t.ChoiceLogprobs(content=content)


def response_logprobs(tokenizer: Any, logprobs: list[TokenLogprob]) -> list[r.Logprob]:
    """The ``logprobs`` of a Responses ``output_text`` part."""
    out = []
    for lp in logprobs:
        text, raw, top = _decoded(tokenizer, lp)
        out.append(r.Logprob(
            token=text, bytes=raw, logprob=lp.logprob,
            top_logprobs=[r.LogprobAlternative(token=a, bytes=b, logprob=v) for a, b, v in top]))
    return out


def completion_logprobs(tokenizer: Any, logprobs: list[TokenLogprob],
                        offset: int) -> c.CompletionLogprobs:
    """The legacy Completions shape: parallel lists, alternatives as {token text: logprob}
    (the sampled token always among them), offsets counted in characters from ``offset`` (a
    streamed chunk's continue where the choice's previous chunk's ended)."""
    out = c.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for lp in logprobs:
        text, _, top = _decoded(tokenizer, lp)
        alternatives = {alt: value for alt, _, value in top}
        alternatives.setdefault(text, lp.logprob)
        out.tokens.append(text)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append(alternatives)
        out.text_offset.append(offset)
        offset += len(text)
    return out


def event_logprobs(logprobs: list[r.Logprob]) -> list[ev.TokenLogprob]:
    """The same, as Responses text delta / done events carry them (no bytes)."""
    return [ev.TokenLogprob(token=lp.token, logprob=lp.logprob,
                            top_logprobs=[ev.TopTokenLogprob(token=a.token, logprob=a.logprob)
                                          for a in lp.top_logprobs])
            for lp in logprobs]


class ContentLogprobs:
    """Matches streamed token logprobs to the chunk their tokens produced, per choice.

    Fed a choice's generation events in order: a ``LogprobsDelta`` waits; a text chunk takes
    what is waiting (its tokens, and any whose text was held back before it). Tool calls
    depend on the API. Chat Completions (``keep_tool_calls``) reports every output token, so
    a call's start and argument chunks take what waits, like text. Responses has logprobs
    only on output text, so a call's events drop what waits (markup and arguments), and the
    choice's end drops the rest when a call came after its last text (the call's closing
    markup). Otherwise the choice's ``Finished`` takes the rest (the end-of-turn token, which
    has no text). ``content[index]`` collects every logprob a choice's chunks took."""

    def __init__(self, keep_tool_calls: bool) -> None:
        self.keep_tool_calls = keep_tool_calls
        self._waiting: dict[int, list[TokenLogprob]] = {}
        self._after_call: set[int] = set()  # choices whose last event was a tool call's
        self.content: dict[int, list[TokenLogprob]] = {}

    def on(self, index: int, event: Any) -> list[TokenLogprob] | None:
        """The logprobs that go with ``event`` when it makes a chunk (or is the choice's end):
        ``[]`` when none wait; None for an event that takes none."""
        from runtime.generation import Finished, LogprobsDelta
        from tools.parsers.base import TextDelta, ToolCallEnd

        if isinstance(event, LogprobsDelta):
            self._waiting.setdefault(index, []).extend(event.logprobs)
            return None
        if isinstance(event, TextDelta | Finished):
            drop = isinstance(event, Finished) and index in self._after_call
            self._after_call.discard(index)
            return self._take(index, drop)
        if self.keep_tool_calls:  # a call's start or arguments make a chunk; its end does not
            return None if isinstance(event, ToolCallEnd) else self._take(index, False)
        self._after_call.add(index)
        self._take(index, True)
        return None

    def _take(self, index: int, drop: bool) -> list[TokenLogprob]:
        taken = self._waiting.pop(index, [])
        if drop:
            return []
        self.content.setdefault(index, []).extend(taken)
        return taken

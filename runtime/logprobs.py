"""Token log-probabilities in the wire shapes of Chat Completions and Responses, and the
queue that matches streamed logprobs to the text chunks their tokens produced."""

from __future__ import annotations

from typing import Any

from engine.outputs import TokenLogprob
from runtime.protocol import chat as t
from runtime.protocol import response_events as ev
from runtime.protocol import responses as r


def token_text(tokenizer: Any, token_id: int) -> tuple[str, list[int]]:
    text = tokenizer.decode([token_id])
    return text, list(text.encode("utf-8"))


def chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob] | None) -> t.ChoiceLogprobs:
    content = []
    for lp in logprobs or []:
        text, raw = token_text(tokenizer, lp.token_id)
        top = []
        for token_id, value in lp.top:
            alt, alt_raw = token_text(tokenizer, token_id)
            top.append(t.TopLogprob(token=alt, logprob=value, bytes=alt_raw))
        content.append(t.TokenLogprob(token=text, logprob=lp.logprob, bytes=raw,
                                      top_logprobs=top))
    return t.ChoiceLogprobs(content=content)


def response_logprobs(tokenizer: Any, logprobs: list[TokenLogprob]) -> list[r.Logprob]:
    """The ``logprobs`` of a Responses ``output_text`` part."""
    out = []
    for lp in logprobs:
        text, raw = token_text(tokenizer, lp.token_id)
        top = [r.LogprobAlternative(token=alt, bytes=alt_raw, logprob=value)
               for alt, alt_raw, value in ((*token_text(tokenizer, i), v) for i, v in lp.top)]
        out.append(r.Logprob(token=text, bytes=raw, logprob=lp.logprob, top_logprobs=top))
    return out


def event_logprobs(logprobs: list[r.Logprob]) -> list[ev.TokenLogprob]:
    """The same, as Responses text delta / done events carry them (no bytes)."""
    return [ev.TokenLogprob(token=lp.token, logprob=lp.logprob,
                            top_logprobs=[ev.TopTokenLogprob(token=a.token, logprob=a.logprob)
                                          for a in lp.top_logprobs])
            for lp in logprobs]


class ContentLogprobs:
    """Matches token logprobs to the content text their tokens produced, per choice.

    Fed a choice's generation events in order: a ``LogprobsDelta`` waits for text; a text
    chunk takes what is waiting (its tokens, and any whose text was held back before it); a
    tool call's events drop it (markup and arguments are not content, as in OpenAI's
    ``content`` logprobs). The choice's ``Finished`` takes the rest (the end-of-turn token,
    which has no text) unless a tool call came after its last text: then the rest is the
    call's closing markup. (Text after a call takes that markup's logprobs with its own.)
    ``content[index]`` collects every logprob a choice's text took."""

    def __init__(self) -> None:
        self._waiting: dict[int, list[TokenLogprob]] = {}
        self._after_call: set[int] = set()  # choices whose last event was a tool call's
        self.content: dict[int, list[TokenLogprob]] = {}

    def on(self, index: int, event: Any) -> list[TokenLogprob] | None:
        """The logprobs that go with ``event`` when it is a text chunk or the choice's end
        (``[]`` when none wait); None for every other event."""
        from runtime.generation import Finished, LogprobsDelta
        from tools.parsers.base import TextDelta

        if isinstance(event, LogprobsDelta):
            self._waiting.setdefault(index, []).extend(event.logprobs)
            return None
        if isinstance(event, TextDelta | Finished):
            taken = self._waiting.pop(index, [])
            if isinstance(event, Finished) and index in self._after_call:
                taken = []
            self._after_call.discard(index)
            self.content.setdefault(index, []).extend(taken)
            return taken
        self._waiting.pop(index, None)  # a tool call's start, arguments or end
        self._after_call.add(index)
        return None

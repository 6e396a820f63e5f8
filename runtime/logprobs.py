"""Token log-probabilities in the wire shapes of Chat Completions and Responses."""

from __future__ import annotations

from typing import Any

from engine.outputs import TokenLogprob
from runtime.protocol import chat as t


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

"""What the engine reports per request per step (msgspec, so it crosses process boundaries)."""

from __future__ import annotations

import msgspec


class TokenLogprob(msgspec.Struct, array_like=True):
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token_id, logprob), best first; empty unless asked for


class EngineOutput(msgspec.Struct):
    request_id: str
    new_token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None  # one per new token when the request asked
    finish_reason: str | None = None  # "stop" | "length" | "abort" once finished
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

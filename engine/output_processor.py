"""Turn engine token outputs into text outputs: detokenize, apply stop strings, count usage.

Torch-free, so the API process can run it next to the sockets while the engine process runs the
model. A stop string found here finishes the request; the caller aborts it in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import EngineOutput, TokenLogprob
from engine.sampling_params import SamplingParams


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # all generated tokens so far
    text: str = ""  # all generated text so far (after stop-string truncation)
    delta_token_ids: list[int] = field(default_factory=list)  # new since the last output
    delta_text: str = ""
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when asked for
    finish_reason: str | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def usage(self) -> Usage:
        return Usage(len(self.prompt_token_ids), len(self.token_ids), self.num_cached_tokens)


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._states: dict[str, tuple[RequestOutput, IncrementalDetokenizer]] = {}

    def add(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        out = RequestOutput(request_id, list(prompt_ids))
        if params.logprobs is not None:
            out.logprobs = []
        self._states[request_id] = (out, IncrementalDetokenizer(self.tokenizer, prompt_ids, params))

    def discard(self, request_id: str) -> None:
        self._states.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._states

    def process(self, engine_outputs: list[EngineOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Returns the updated outputs, and the ids that a stop string finished (to abort)."""
        results, to_abort = [], []
        for eo in engine_outputs:
            state = self._states.get(eo.request_id)
            if state is None:
                continue  # finished here already (stop string) while the engine ran a step
            out, detok = state
            out.num_cached_tokens = eo.num_cached_tokens
            num_taken = detok.add_tokens(eo.new_token_ids)  # fewer past a stop string
            out.token_ids.extend(eo.new_token_ids[:num_taken])
            out.delta_token_ids = list(eo.new_token_ids[:num_taken])
            if out.logprobs is not None and eo.logprobs:
                out.logprobs.extend(eo.logprobs[:num_taken])
            finish = eo.finish_reason
            if detok.stopped and finish is None:
                finish = "stop"
                to_abort.append(eo.request_id)
            elif detok.stopped:
                finish = "stop"
            if finish is not None:
                detok.flush()
            out.delta_text = detok.take_delta(final=finish is not None)
            out.text = detok.text
            out.finish_reason = finish
            if finish is not None:
                del self._states[eo.request_id]
            results.append(out)
        return results, to_abort

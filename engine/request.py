"""One generation request as the scheduler sees it (pure Python, no torch).

Prefill and decode are one rule: a request's tokens are ``prompt_ids + output_ids``; the scheduler
moves ``num_computed_tokens`` (tokens whose KV is in the cache for this request) towards
``num_tokens``. When a step computes the last of them, the runner samples the next token.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from engine.radix_cache import RadixNode
from engine.sampling_params import SamplingParams
from engine.session_pins import SessionHint


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the context window
    ABORT = "abort"  # the client went away or asked to cancel


class Request:
    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        eos_token_ids: list[int],
        max_model_len: int,
        cache_salt: str = "",
        session: SessionHint | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_ids = list(prompt_ids)
        self.output_ids: list[int] = []
        self.params = params
        self.stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else frozenset(eos_token_ids)
        )
        self.max_len = max_model_len  # prompt + output never exceeds this
        self.cache_salt = cache_salt  # radix namespace: no prefix is shared across salts
        self.session = session  # pin the path for this session when the request finishes
        self.status = RequestStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.arrival_time = time.monotonic()

        self.num_computed_tokens = 0
        self.page_ids: list[int] = []  # page table; the first ``num_shared_pages`` are the tree's
        self.num_shared_pages = 0
        self.lock_node: RadixNode | None = None  # radix node locked on our behalf
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache (first admission)
        self.num_preemptions = 0
        self.sampler_state: Any = None  # opaque to the scheduler (e.g. a seeded torch.Generator)
        # engine.structured.GrammarState when params.grammar is set, made by the runner at the
        # first sample; opaque to the scheduler. It has accepted exactly ``output_ids``.
        self.grammar_state: Any = None
        # Tokens a drafter guessed will follow (engine.spec); the scheduler takes them for the
        # next decode step and clears the list, so stale guesses are never verified.
        self.draft_ids: list[int] = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        """Record a sampled token and decide whether the request is done."""
        self.output_ids.append(token_id)
        params = self.params
        if token_id in self.stop_ids:
            self.finish_reason = FinishReason.STOP
        elif params.max_tokens is not None and len(self.output_ids) >= params.max_tokens:
            self.finish_reason = FinishReason.LENGTH
        elif self.num_tokens >= self.max_len:
            self.finish_reason = FinishReason.LENGTH

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.value}, "
            f"computed={self.num_computed_tokens}/{self.num_tokens}, pages={self.page_ids})"
        )

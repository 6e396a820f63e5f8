"""The generations of one request: ``n`` choices of each of its prompts, run side by side.

Choice ``index`` is ``prompt number * n + choice number`` (OpenAI's numbering). A prompt with
several choices is prefilled once first: a one-token request computes its KV, which the prefix
cache keeps when it ends, and then every choice starts from that cache (SGLang does the same
for ``n`` > 1). Started together instead, the choices would each prefill the whole prompt in
the same step: ``n`` times the work, which for an agent's long context is ``n`` times the TTFT.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator

from engine.sampling_params import SamplingParams
from runtime import convert
from runtime.fanout import merge
from runtime.generation import Finished, GenerationEvent, generate
from runtime.protocol.chat import Usage
from runtime.state import ServerState
from tools.parsers.base import ToolCallParser

# Shorter prompts are not prefilled once first: the copies cost little beside the extra engine
# round trip (about one step) the warm-up adds before the first token.
PREFILL_ONCE_MIN_TOKENS = 256


class Choices:
    def __init__(self, state: ServerState, request_id: str, prompts: list[list[int]],
                 params: SamplingParams, n: int, parser: ToolCallParser | None = None,
                 cache_salt: str = "") -> None:
        self.state, self.request_id, self.prompts = state, request_id, prompts
        self.params, self.n, self.parser, self.cache_salt = params, n, parser, cache_salt
        # Per prompt: its cached tokens when it was prefilled once (None: each choice's own).
        self.prefilled: list[int | None] = [None] * len(prompts)
        self.finals: dict[int, Finished] = {}  # by choice index, as each choice ends

    def __len__(self) -> int:
        return len(self.prompts) * self.n

    @property
    def done(self) -> bool:
        return len(self.finals) == len(self)

    async def events(self) -> AsyncIterator[tuple[int, GenerationEvent]]:
        """``(choice index, event)`` as the choices' tokens come; each choice ends with its
        ``Finished``, kept in ``finals`` (and observed in the metrics) before it is yielded.
        Closing it early aborts every choice still running."""
        start = time.monotonic()
        warm = [p for p, ids in enumerate(self.prompts) if self._prefill_once(ids)]
        for p, cached in zip(warm, await asyncio.gather(*(self._prefill(p) for p in warm))):
            self.prefilled[p] = cached
        streams = [
            generate(self.state.engine, self.state.tokenizer, f"{self.request_id}-{p * self.n + j}",
                     ids, convert.choice_params(self.params, j), copy.deepcopy(self.parser),
                     None, self.cache_salt)
            for p, ids in enumerate(self.prompts) for j in range(self.n)]
        async for index, event in merge(streams):
            if isinstance(event, Finished):
                self.finals[index] = event
                self.state.metrics.observe_finished(event, start, time.monotonic())
            yield index, event

    def usage(self) -> Usage:
        """Once every choice ended: each prompt counts once. Its cached part is what its
        prefill found in the cache: the one-off prefill's, or the least any of its choices
        found."""
        finals = [self.finals[i] for i in range(len(self))]
        n, prompt, cached = self.n, 0, 0
        for p in range(len(self.prompts)):
            group = finals[p * n:(p + 1) * n]
            prompt += group[0].prompt_tokens
            warm = self.prefilled[p]
            cached += warm if warm is not None else min(f.cached_tokens for f in group)
        return Usage.of(prompt, sum(f.completion_tokens for f in finals), cached)

    def _prefill_once(self, prompt_ids: list[int]) -> bool:
        ready = self.state.ready
        return self.n > 1 and ready.prefix_caching and \
            len(prompt_ids) >= PREFILL_ONCE_MIN_TOKENS

    async def _prefill(self, p: int) -> int:
        """Prefill prompt ``p`` alone (one greedy token, discarded); its cached tokens."""
        cached = 0
        async for out in self.state.engine.generate(
                f"{self.request_id}-prefill-{p}", self.prompts[p],
                SamplingParams(max_tokens=1, temperature=0.0), None, self.cache_salt):
            cached = out.num_cached_tokens
        return cached

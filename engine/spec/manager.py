"""Which requests speculate this step, with how many drafts, and the back-off rule.

Before each ``Scheduler.schedule``, ``SpecDecoder.propose`` writes ``request.draft_ids`` for every
running request that is decoding (exactly one token to compute). The scheduler schedules such a
request with ``1 + len(draft_ids)`` tokens (it trims drafts to the token budget, the context
window and ``max_tokens``), the runner verifies them, and after ``Scheduler.update`` the engine
reports the outcome through ``observe``.

A request speculates when the engine has a drafter and its ``params.speculative`` is not False.
Constrained requests (a grammar) speculate too: the runner masks each drafted position with the
grammar's matcher advanced through the drafts before it, then rolls the matcher back
(``engine.structured.mask_logits``), so a draft the grammar refuses is simply rejected.

Back-off (documented rule; both bounds are constants below):
- batch: with more than ``MAX_BATCH`` decoding requests no request drafts — a verify step's cost
  grows with its token count, and a large decode batch is already compute-efficient;
- acceptance: each request keeps an exponential moving average of accepted / drafted per verify
  step (weight ``EMA_WEIGHT``, starting at ``INITIAL_RATE``); after at least ``MIN_STEPS`` verify
  steps with the average under ``MIN_ACCEPT_RATE`` it stops drafting for a cool-down of
  ``COOLDOWN_STEPS`` decode steps, doubled each time it backs off again (up to
  ``MAX_COOLDOWN_STEPS``), then probes afresh.
  ``params.speculative=True`` exempts a request from this rule (never from the batch rule).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.request import Request
from engine.spec.base import DraftContext, Drafter, create_drafter

MAX_BATCH = 16
EMA_WEIGHT = 0.25
MIN_STEPS = 4
MIN_ACCEPT_RATE = 0.2
INITIAL_RATE = 0.5  # a fresh probe starts neutral: four misses in a row are enough to back off
COOLDOWN_STEPS = 8
MAX_COOLDOWN_STEPS = 256


@dataclass
class SpecStats:
    num_verify_steps: int = 0  # request-steps that verified at least one draft
    num_draft_tokens: int = 0  # drafts scheduled
    num_accepted_tokens: int = 0  # drafts accepted
    num_emitted_tokens: int = 0  # tokens appended by verify steps (accepted + bonus)
    num_proposals: int = 0  # drafter calls
    propose_time_s: float = 0.0  # host time in the drafter

    @property
    def mean_accepted_len(self) -> float:
        """Tokens per verify step (accepted drafts + the bonus token)."""
        return self.num_emitted_tokens / max(self.num_verify_steps, 1)

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / max(self.num_draft_tokens, 1)


@dataclass
class _Backoff:
    rate: float = INITIAL_RATE  # moving average of accepted / drafted
    num_steps: int = 0  # verify steps since the last probe started
    skip: int = 0  # decode steps left in the cool-down
    cooldown: int = COOLDOWN_STEPS  # length of the next cool-down


class SpecDecoder:
    """Owns the drafter and the per-request back-off state; engine loop thread only.

    ``context`` lends the target model to drafters that run one (``Drafter.uses_model``).
    """

    def __init__(self, drafter: str | Drafter, num_speculative_tokens: int,
                 context: DraftContext | None = None) -> None:
        assert num_speculative_tokens >= 1, "num_speculative_tokens must be >= 1"
        self.num_speculative_tokens = num_speculative_tokens
        self.drafter = (create_drafter(drafter, num_speculative_tokens, context)
                        if isinstance(drafter, str) else drafter)
        self.stats = SpecStats()
        self._backoff: dict[str, _Backoff] = {}

    def propose(self, running: list[Request]) -> None:
        for request in running:
            request.draft_ids = []
        decoding = [r for r in running if r.num_tokens - r.num_computed_tokens == 1]
        if len(decoding) > MAX_BATCH:
            return
        for request in decoding:
            params = request.params
            if params.speculative is False:
                continue
            k = params.num_speculative_tokens
            if k is None:
                k = self.num_speculative_tokens
            elif k == 0:  # the request turned speculation off
                continue
            state = self._backoff.get(request.request_id)
            if state is None:
                state = self._backoff[request.request_id] = _Backoff()
            if state.skip > 0:
                state.skip -= 1
                continue
            start = time.perf_counter()
            request.draft_ids = self.drafter.propose(request, k)
            self.stats.propose_time_s += time.perf_counter() - start
            self.stats.num_proposals += 1

    def observe(self, request: Request, num_drafted: int, num_emitted: int) -> None:
        """A verify step of ``num_drafted`` drafts appended ``num_emitted`` tokens (>= 1, fewer
        than accepted + 1 when the request finished inside the run)."""
        num_accepted = min(num_emitted - 1, num_drafted)
        self.stats.num_verify_steps += 1
        self.stats.num_draft_tokens += num_drafted
        self.stats.num_accepted_tokens += num_accepted
        self.stats.num_emitted_tokens += num_emitted
        self.drafter.observe(request, num_drafted, num_accepted)
        state = self._backoff.get(request.request_id)
        if state is None or request.params.speculative is True:
            return
        state.rate += EMA_WEIGHT * (num_accepted / num_drafted - state.rate)
        state.num_steps += 1
        if state.num_steps >= MIN_STEPS and state.rate < MIN_ACCEPT_RATE:
            state.skip, state.rate, state.num_steps = state.cooldown, INITIAL_RATE, 0
            state.cooldown = min(2 * state.cooldown, MAX_COOLDOWN_STEPS)

    def release(self, request: Request) -> None:
        request.draft_ids = []
        self._backoff.pop(request.request_id, None)
        self.drafter.release(request)

"""Prefill first: short prompts arriving while others decode run without the decode rows.

An agent's tool result (a few hundred new tokens) that arrives while other sessions decode over
long contexts would otherwise wait, in a mixed step, for those rows' attention over their whole
KV. With ``prefill_first_tokens`` set, a step that admits only whole prompts of at most that
many new tokens together runs them alone; the decode rows sit that step out, keep their page
reservations and run next step as they were.

Each sit-out costs every decode row one step, so it is bounded twice: never two steps in a row,
and at most ``prefill_first_max_share`` sit-outs per step the decode rows run, in the long run
(a bucket of ``SIT_OUT_BURST`` sit-outs, refilled by the share at each step they run). Sessions'
turns arriving a few at a time all go first; busy chat serving, with a short prompt at every
other step, keeps nearly all of its decode steps, the rest of its prompts running mixed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config import SchedulerConfig
    from engine.scheduler import SchedulerOutput, SchedulerStats

SIT_OUT_BURST = 4.0  # sit-outs the bucket holds (and starts with)


class PrefillFirst:
    def __init__(self, config: SchedulerConfig, stats: SchedulerStats) -> None:
        self.max_tokens = config.prefill_first_tokens
        self.max_share = config.prefill_first_max_share
        self.stats = stats
        self.credit = SIT_OUT_BURST  # sit-outs the decode rows may still give up now
        self._sat_out_last = False

    def apply(self, out: SchedulerOutput, num_running: int) -> None:
        """Drop the first ``num_running`` rows of ``out`` (the running requests) when this step
        is one to run without them; refill the bucket when they run."""
        self._sat_out_last = self._sits_out(out, num_running)
        if self._sat_out_last:
            self.credit -= 1.0
            self.stats.num_computed_tokens -= num_running
            self.stats.num_prefill_first_steps += 1
            del out.requests[:num_running]
        elif num_running:
            self.decodes_ran()

    def decodes_ran(self) -> None:
        """A step the decode rows run in (the scheduler's overlapped steps call this too)."""
        self.credit = min(SIT_OUT_BURST, self.credit + self.max_share)

    def _sits_out(self, out: SchedulerOutput, num_running: int) -> bool:
        """The running rows are all plain decodes, the rest whole prompts of at most
        ``max_tokens`` new tokens together, the step before ran them, and the bucket has a
        sit-out left (when it has not, counted as capped)."""
        running, admitted = out.requests[:num_running], out.requests[num_running:]
        if (not self.max_tokens or not running or not admitted or self._sat_out_last
                or sum(s.num_new_tokens for s in admitted) > self.max_tokens
                or not all(s.sample for s in admitted)
                or not all(s.num_new_tokens == 1 and s.sample and not s.draft_ids
                           for s in running)):
            return False
        if self.credit < 1.0:
            self.stats.num_prefill_first_capped += 1
            return False
        return True

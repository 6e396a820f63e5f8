"""Liveness under a tight pool: agent sessions (pinned, demoted to the host tier, continued and
branched) never leave a request waiting forever while the pool could make room for it.

The workload is B2's shape scaled to 39 pages of 16 tokens: a shared system prompt, sessions
whose turns extend their previous prompt + output, probes that branch off a session's history,
and fresh conversations that share only the system prompt. Found a real deadlock: a partial
match into a long cached node locked the whole node, so a lone request could not evict pages
it needed (fixed in ``RadixCache.match_prefix``).
"""

from __future__ import annotations

import random

import pytest

from engine.config import SchedulerConfig
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.session_pins import SessionHint

PS = 16


def drain(sched: Scheduler, rng: random.Random) -> None:
    for _ in range(200):
        if not sched.has_unfinished():
            return
        out = sched.schedule()
        assert not out.is_empty, (
            f"stalled: {len(sched.running)} running, waiting "
            f"{[(w.request_id, w.num_tokens) for w in sched.waiting]}, free {sched.pool.num_free}, "
            f"evictable {sched.cache.num_evictable_pages}")
        sched.update(out, {s.request.request_id: [rng.randrange(1, 1000)]
                           for s in out.requests if s.sample})
        sched.check_integrity()
    raise AssertionError("did not drain in 200 steps")


@pytest.mark.parametrize("seed", range(12))
def test_sessions_on_a_tight_pool_always_progress(seed: int) -> None:
    rng = random.Random(seed)
    sched = Scheduler(SchedulerConfig(num_pages=40, page_size=PS, max_model_len=1024,
                                      max_num_seqs=8, max_num_batched_tokens=2048,
                                      pin_budget_pages=20, host_tier_pages=100))
    system = [rng.randrange(1, 1000) for _ in range(100)]
    history: dict[str, list[int]] = {}

    def words(n: int) -> list[int]:
        return [rng.randrange(1, 1000) for _ in range(n)]

    for turn in range(12):
        sid = f"s{rng.randrange(3)}"
        prev = history.get(sid)
        fresh = prev is None or len(prev) > 480
        prompt = system + words(rng.randrange(200, 313)) if fresh else prev + words(64)
        request = Request(f"t{turn}", prompt, SamplingParams(max_tokens=8, ignore_eos=True),
                          [0], 1024, session=SessionHint(sid))
        sched.add(request)
        drain(sched, rng)
        if not fresh and rng.random() < 0.5:  # a probe branching off the same history
            sched.add(Request(f"p{turn}", prev + words(57),
                              SamplingParams(max_tokens=1, ignore_eos=True), [0], 1024))
            drain(sched, rng)
        history[sid] = request.all_ids

"""Session retention with the real model: pins survive pressure, the host tier is bit-exact."""

from __future__ import annotations

import torch

from engine.llm import LLM
from engine.sampling_params import SamplingParams
from engine.session_pins import SessionHint

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def turn(llm, ids, session):
    out = llm.generate([ids], GREEDY, sessions=[SessionHint(session, lease_s=600.0)])[0]
    return out, ids + out.token_ids


def test_pinned_session_survives_pressure(default_model_path):
    llm = LLM(default_model_path, page_size=16, num_pages=48, pin_budget_fraction=0.5)
    stats = llm.engine.scheduler.stats
    agent = list(range(2000, 2300))  # 300 tokens
    _, history = turn(llm, agent, "agent")
    idle = list(range(5000, 5300))
    llm.generate([idle], GREEDY)  # not a session: first to go under pressure
    for i in range(4):  # fill the pool several times over
        llm.generate([list(range(8000 + 400 * i, 8000 + 400 * i + 300))], GREEDY)
    assert llm.engine.scheduler.stats.num_evicted_pages > 0
    before = stats.num_computed_tokens
    out, _ = turn(llm, history + [42, 43, 44], "agent")
    # Only the new tokens are prefilled: 3 + the previous turn's last sampled token, + decodes.
    assert out.num_cached_tokens == len(history) - 1
    assert stats.num_computed_tokens - before == 4 + 7
    assert llm.engine.scheduler.cache.match_prefix(idle).pages == []
    llm.engine.scheduler.check_integrity()


def test_lease_expiry_host_round_trip_is_bit_exact(default_model_path):
    llm = LLM(default_model_path, page_size=16, num_pages=48)
    sched, runner = llm.engine.scheduler, llm.engine.runner
    prompt = list(range(3000, 3100))
    _, history = turn(llm, prompt, "s")
    kv_tokens = history[:-1]
    pages = sched.cache.match_prefix(kv_tokens).pages
    ids = torch.tensor(pages)
    k_ref, v_ref = (torch.stack(t) for t in runner.kv_cache.read_pages(ids))
    sched.sessions.clock = lambda: 1e12  # every lease is over
    llm.engine.step()  # demotion: backup to the host tier, lock dropped
    k_host, v_host = runner.host_tier.copies["s"]
    assert torch.equal(k_host, k_ref) and torch.equal(v_host, v_ref)
    sched.pool.free(sched.cache.evict(10**6))  # the device copy is gone
    assert sched.cache.match_prefix(kv_tokens).pages == []
    nxt = history + [11, 12]
    out, _ = turn(llm, nxt, "s")
    assert sched.sessions.stats.num_prefetches == 1
    assert out.num_cached_tokens >= len(pages) * 16
    fresh = LLM(default_model_path, page_size=16, num_pages=48, enable_prefix_caching=False)
    assert out.token_ids == fresh.generate([nxt], GREEDY)[0].token_ids
    sched.check_integrity()

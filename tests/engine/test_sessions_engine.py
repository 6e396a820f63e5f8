"""Session retention with a real (tiny, random-weight) model in process: a session waiting on a
tool keeps its KV while other sessions fill the pool, the pin budget demotes by retention class,
and the host tier round trip is bit-exact."""

from __future__ import annotations

import torch

from engine.engine_process import _Loop
from engine.ipc import PREFETCH_SECONDS_BUCKETS
from engine.llm import LLM
from engine.sampling_params import SamplingParams
from engine.session_pins import RETENTION_TOOL_WAIT, SessionHint

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
PS = 16


def turn(llm, ids, session):
    out = llm.generate([ids], GREEDY, sessions=[SessionHint(session, lease_s=600.0)])[0]
    return out, ids + out.token_ids


def kv_of(history):
    return history[:-1]  # the last sampled token has no KV yet


def test_tool_wait_session_survives_other_sessions_filling_the_pool(tiny_llama_path):
    # 47 pages; pins may hold 23. Every turn below leaves 307 KV tokens: 19 full pages + 1.
    llm = LLM(tiny_llama_path, page_size=PS, num_pages=48, pin_budget_fraction=0.5)
    sched = llm.engine.scheduler
    _, agent = turn(llm, list(range(2000, 2300)), "agent")
    llm.engine.touch_session("agent", retention=RETENTION_TOOL_WAIT)  # a function call ended it
    agent_pages = sched.cache.match_prefix(kv_of(agent)).pages
    others = [turn(llm, list(range(5000 + 400 * i, 5300 + 400 * i)), f"other{i}")[1]
              for i in range(4)]  # each pinned, then demoted over the budget: idle
    evicted = sched.cache.evicted_by_class
    assert evicted["idle"] > 0 and evicted["pinned"] == 0 and evicted["expired"] == 0
    assert sched.sessions.pins["agent"].pinned
    assert sched.cache.match_prefix(kv_of(agent)).pages == agent_pages
    assert sched.cache.match_prefix(kv_of(others[0])).pages == []  # an idle session went
    sched.check_integrity()

    stats = sched.stats
    before = stats.num_computed_tokens
    out, _ = turn(llm, agent + [42, 43, 44], "agent")
    # Only the new tokens are prefilled: 3 + the previous turn's last sampled token, + 7 decodes.
    assert out.num_cached_tokens == len(agent) - 1
    assert stats.num_computed_tokens - before == 4 + 7
    assert sched.sessions.stats.num_prefetches == 0

    # An evicted idle session comes back: its path is prefetched from the host tier.
    out, _ = turn(llm, others[0] + [7], "other0")
    assert sched.sessions.stats.num_prefetches == 1
    assert out.num_cached_tokens >= 19 * PS
    sched.check_integrity()
    engine_stats = _Loop(llm.engine, None, None).stats()
    assert engine_stats.num_evicted_pages_by_class == sched.cache.evicted_by_class
    assert engine_stats.num_evicted_session_pages == engine_stats.num_evicted_pages > 0
    assert engine_stats.num_sessions == 5 and engine_stats.num_prefetches == 1
    assert engine_stats.num_prefetched_pages == sched.sessions.stats.num_prefetched_pages > 0
    buckets = engine_stats.prefetch_seconds_buckets
    assert len(buckets) == len(PREFETCH_SECONDS_BUCKETS) + 1 and buckets[-1] == 1
    assert buckets == sorted(buckets) and engine_stats.prefetch_seconds > 0


def test_tool_wait_outranks_a_later_idle_session_under_the_pin_budget(tiny_llama_path):
    llm = LLM(tiny_llama_path, page_size=PS, num_pages=96, pin_budget_fraction=0.25)
    sched, host_tier = llm.engine.scheduler, llm.engine.runner.host_tier
    _, tool = turn(llm, list(range(2000, 2300)), "tool")  # 19 pinned pages of 23 allowed
    llm.engine.touch_session("tool", retention=RETENTION_TOOL_WAIT)
    _, chat = turn(llm, list(range(5000, 5300)), "chat")  # later lease, normal class
    llm.generate([[1, 2, 3]], GREEDY)  # a step: the budget is enforced at each
    assert sched.sessions.pins["tool"].pinned and not sched.sessions.pins["chat"].pinned
    assert list(host_tier.copies) == ["chat"] and sched.sessions.stats.num_demotions == 1
    assert sched.cache.num_evictable_pages >= 19  # chat's pages may go now; tool's may not


def test_lease_expiry_host_round_trip_is_bit_exact(tiny_llama_path):
    llm = LLM(tiny_llama_path, page_size=PS, num_pages=48)
    sched, runner = llm.engine.scheduler, llm.engine.runner
    prompt = list(range(3000, 3100))
    _, history = turn(llm, prompt, "s")
    kv_tokens = kv_of(history)
    pages = sched.cache.match_prefix(kv_tokens).pages
    ids = torch.tensor(pages)
    k_ref, v_ref = (torch.stack(t) for t in runner.kv_cache.read_pages(ids))
    sched.sessions.clock = lambda: 1e12  # every lease is over
    llm.engine.step()  # demotion: backup to the host tier, lock dropped, no longer live
    k_host, v_host = runner.host_tier.copies["s"]
    assert torch.equal(k_host, k_ref) and torch.equal(v_host, v_ref)
    assert sched.sessions.num_live_sessions == 0
    sched.pool.free(sched.cache.evict(10**6))  # the device copy is gone
    assert sched.cache.match_prefix(kv_tokens).pages == []
    nxt = history + [11, 12]
    out, _ = turn(llm, nxt, "s")
    assert sched.sessions.stats.num_prefetches == 1
    assert out.num_cached_tokens >= len(pages) * PS
    fresh = LLM(tiny_llama_path, page_size=PS, num_pages=48, enable_prefix_caching=False)
    assert out.token_ids == fresh.generate([nxt], GREEDY)[0].token_ids
    sched.check_integrity()

"""Scheduler bookkeeping without a model: exact page ids, chunking, prefix reuse, preemption."""

from __future__ import annotations

import subprocess
import sys

from engine.config import SchedulerConfig
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

PS = 4
EOS = 0


def make(num_pages=16, budget=64, max_seqs=8, caching=True, max_len=256) -> Scheduler:
    return Scheduler(SchedulerConfig(num_pages=num_pages, page_size=PS, max_model_len=max_len,
                                     max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                                     enable_prefix_caching=caching))


def req(rid: str, prompt: list[int], max_tokens: int = 4) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), [EOS], 256)


def next_token(request: Request) -> int:
    """A deterministic stand-in for the model: the next token is a function of the sequence."""
    return 1 + (sum(request.all_ids) * 31 + request.num_tokens) % 97


def run_step(sched: Scheduler):
    out = sched.schedule()
    sampled = {s.request.request_id: [next_token(s.request)] for s in out.requests if s.sample}
    sched.update(out, sampled)
    sched.check_integrity()
    return out


def run_all(sched: Scheduler, max_steps: int = 1000) -> None:
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return
        run_step(sched)
    raise AssertionError("scheduler did not drain")


def test_prefill_then_decode_exact_pages():
    sched = make()
    r = req("a", list(range(10, 20)))  # 10 tokens -> 3 pages
    sched.add(r)
    out = run_step(sched)
    assert [(s.start, s.num_new_tokens, s.sample) for s in out.requests] == [(0, 10, True)]
    assert r.page_ids == [1, 2, 3] and len(r.output_ids) == 1
    out = run_step(sched)  # decode: token 11 fits page 3
    assert [(s.start, s.num_new_tokens) for s in out.requests] == [(10, 1)]
    run_step(sched)
    assert r.page_ids == [1, 2, 3]
    run_step(sched)  # 4th token done: finished, KV of 13 tokens cached
    assert r.is_finished and r.finish_reason.value == "length"
    assert sched.cache.num_cached_pages == 4 and sched.pool.num_free == 11


def test_chunked_prefill_respects_budget_and_mixes_with_decode():
    sched = make(budget=8)
    a, b = req("a", list(range(1, 5)), max_tokens=3), req("b", list(range(30, 50)))
    sched.add(a)
    run_step(sched)
    sched.add(b)
    out = run_step(sched)  # a decodes one token, b gets the remaining 7 of the budget
    assert [(s.request.request_id, s.num_new_tokens, s.sample) for s in out.requests] == [
        ("a", 1, True), ("b", 7, False)]
    out = run_step(sched)
    assert [(s.request.request_id, s.start, s.num_new_tokens) for s in out.requests] == [
        ("a", 5, 1), ("b", 7, 7)]
    run_all(sched)
    assert b.output_ids and len(b.output_ids) == 4


def test_second_request_reuses_prefix_and_partial_page():
    sched = make()
    prompt = list(range(100, 114))  # 14 tokens: 3 full pages + 2
    a = req("a", prompt, max_tokens=1)
    sched.add(a)
    run_all(sched)
    assert sched.cache.num_cached_pages == 4  # 14 tokens of KV (the sampled one has none)
    b = req("b", prompt + [7, 8, 9])
    sched.add(b)
    out = run_step(sched)
    assert b.num_cached_tokens == 14
    assert out.requests[0].start == 14 and out.requests[0].num_new_tokens == 3
    assert b.page_ids[:3] == [1, 2, 3] and b.num_shared_pages == 3
    # 2 slots of the cached tail are copied, not recomputed
    assert out.copies == [(4, b.page_ids[3], 2)]
    run_all(sched)


def test_partial_page_lock_never_strands_a_lone_request():
    """What a request reuses stays locked while it runs: the shared page, the partial page it
    copies and the rest of their node. On a pool where that is the difference and nothing
    runs, the request must start by recomputing instead of waiting forever (found by a server
    test: the engine loop spun with the request never admitted)."""
    sched = make(num_pages=9)  # 8 usable pages of 4 tokens
    a = req("a", list(range(100, 106)), max_tokens=1)  # caches 1 full page + 2 tokens
    sched.add(a)
    run_all(sched)
    assert (sched.pool.num_free, sched.cache.num_cached_pages) == (6, 2)
    # 30 tokens: 8 pages in all. Sharing page 1 and copying 1 token of page 2 locks both: 7
    # own pages needed, 6 free, none evictable. Recomputing: 8 needed, 6 free + 2 evictable.
    b = req("b", list(range(100, 105)) + list(range(500, 525)), max_tokens=2)
    sched.add(b)
    out = run_step(sched)
    assert [s.request.request_id for s in out.requests] == ["b"] and not out.copies
    assert b.num_cached_tokens == 0 and b.num_shared_pages == 0
    run_all(sched)
    assert b.finish_reason is not None and len(b.output_ids) == 2


def test_identical_prompt_keeps_one_token_to_compute():
    sched = make()
    sched.add(req("a", list(range(1, 9)), max_tokens=1))
    run_all(sched)
    b = req("b", list(range(1, 9)), max_tokens=1)
    sched.add(b)
    out = run_step(sched)
    assert (out.requests[0].start, out.requests[0].num_new_tokens) == (7, 1)
    (src, dst, n), = out.copies
    assert (src, n) == (2, 3) and dst not in (1, 2)  # 3 slots of page 2 into a fresh page


def test_outputs_do_not_depend_on_caching_or_preemption():
    prompts = [[(i * 7 + j) % 50 + 1 for j in range(5 + 3 * i)] for i in range(6)]

    def outputs(**kw):
        sched = make(**kw)
        reqs = [req(f"r{i}", p, max_tokens=12) for i, p in enumerate(prompts)]
        for r in reqs:
            sched.add(r)
        run_all(sched)
        return [r.output_ids for r in reqs], sched

    base, _ = outputs(num_pages=64, caching=False)
    cached, _ = outputs(num_pages=64)
    tight, sched = outputs(num_pages=12, budget=16)  # 11 pages cannot hold all six at once
    assert base == cached == tight
    assert sched.stats.num_preemptions > 0
    assert sched.pool.num_free + sched.cache.num_cached_pages == sched.pool.num_total


def test_abort_frees_everything():
    sched = make()
    a, b = req("a", list(range(1, 12)), max_tokens=50), req("b", list(range(5, 9)))
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert sched.abort("a").finish_reason.value == "abort"
    assert sched.abort("missing") is None
    sched.check_integrity()
    run_all(sched)
    assert sched.pool.num_free + sched.cache.num_cached_pages == sched.pool.num_total


def test_max_num_seqs_limits_running():
    sched = make(max_seqs=2)
    for i in range(4):
        sched.add(req(f"r{i}", [i + 1, i + 2, i + 3]))
    out = run_step(sched)
    assert [s.request.request_id for s in out.requests] == ["r0", "r1"]
    run_all(sched)


def test_request_is_capped_by_pool_capacity():
    sched = make(num_pages=4, caching=False)  # 3 pages: 12 tokens at most
    r = req("a", [1, 2, 3, 4, 5], max_tokens=100)
    sched.add(r)
    run_all(sched)
    assert r.num_tokens == 12 and r.finish_reason.value == "length"


def test_scheduler_and_cache_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import engine.scheduler, engine.radix_cache, engine.page_pool, engine.request\n"
        "import engine.config, engine.detokenizer, engine.output_processor\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

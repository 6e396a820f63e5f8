"""``prefill_first_tokens``: a short whole prompt arriving while others decode runs without the
decode rows for one step (never two in a row, at most ``prefill_first_max_share`` of their steps
over time), and nothing else about the run changes."""

from __future__ import annotations

import pytest

from engine.config import EngineConfig, SchedulerConfig
from engine.llm import LLM
from engine.prefill_first import SIT_OUT_BURST
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

PS = 4


def make(limit: int, budget: int = 64, share: float = 1.0, num_pages: int = 64) -> Scheduler:
    return Scheduler(SchedulerConfig(num_pages=num_pages, page_size=PS, max_model_len=256,
                                     max_num_seqs=8, max_num_batched_tokens=budget,
                                     prefill_first_tokens=limit, prefill_first_max_share=share))


def req(rid: str, prompt: list[int], max_tokens: int = 6) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), [0], 256)


def step(sched: Scheduler) -> list[tuple[str, int]]:
    """One step with a deterministic stand-in for the model; (request, new tokens) per row."""
    out = sched.schedule()
    sched.update(out, {s.request.request_id: [1 + (sum(s.request.all_ids) * 31) % 97]
                       for s in out.requests if s.sample})
    sched.check_integrity()
    return [(s.request.request_id, s.num_new_tokens) for s in out.requests]


def test_short_prompt_runs_alone_once_then_everyone_decodes():
    sched = make(limit=16)
    sched.add(req("a", list(range(1, 9))))
    sched.add(req("b", list(range(20, 30))))
    assert step(sched) == [("a", 8), ("b", 10)]  # nothing was decoding: one mixed step
    assert step(sched) == [("a", 1), ("b", 1)]
    sched.add(req("c", list(range(40, 52))))
    assert step(sched) == [("c", 12)]  # a and b sit this step out
    assert sched.stats.num_prefill_first_steps == 1
    computed = sched.stats.num_computed_tokens
    sched.add(req("d", list(range(60, 65))))
    # Never two in a row: d's prompt runs with the decodes.
    assert step(sched) == [("a", 1), ("b", 1), ("c", 1), ("d", 5)]
    assert sched.stats.num_computed_tokens == computed + 8
    assert step(sched) == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    assert sched.stats.num_prefill_first_steps == 1


@pytest.mark.parametrize("case", ["over_limit", "chunked", "off"])
def test_other_steps_stay_mixed(case):
    limit, budget, prompt = {"over_limit": (8, 64, 12), "chunked": (64, 10, 30),
                             "off": (0, 64, 12)}[case]
    sched = make(limit=limit, budget=budget)
    sched.add(req("a", [3, 4, 5]))
    step(sched)
    sched.add(req("b", list(range(10, 10 + prompt))))
    rows = step(sched)
    assert rows[0] == ("a", 1) and rows[1][0] == "b"


def test_outputs_equal_the_mixed_schedule():
    """The same arrivals with and without the policy: every request gets the same tokens."""
    def run(limit: int) -> tuple[dict[str, list[int]], int]:
        sched = make(limit=limit, budget=24)
        requests = [req(f"r{i}", [7 + i] * (3 + 5 * i), max_tokens=5 + i) for i in range(5)]
        pending = list(requests)
        for i in range(60):
            if i % 3 == 0 and pending:
                sched.add(pending.pop(0))
            if sched.has_unfinished():
                step(sched)
        assert not sched.has_unfinished() and not pending
        return {r.request_id: r.output_ids for r in requests}, sched.stats.num_prefill_first_steps

    (mixed, mixed_alone), (first, first_alone) = run(0), run(16)
    assert first == mixed and all(len(mixed[f"r{i}"]) == 5 + i for i in range(5))
    assert mixed_alone == 0 and first_alone >= 2


def test_share_bounds_sit_outs_under_a_steady_stream_of_prompts():
    """A short prompt at every other step (busy chat): the bucket's burst goes first, then the
    decode rows sit out one step per 1/share steps they run, the other prompts running mixed."""
    share, num_steps = 0.125, 160
    sched = make(limit=16, budget=64, share=share, num_pages=256)
    sched.add(req("long", [5, 6, 7], max_tokens=200))
    step(sched)
    sat_out_at, mixed_prompts, n = [], 0, 0
    for i in range(num_steps):
        if i % 2 == 0:
            n += 1
            sched.add(req(f"p{n}", [100 + n] * 4, max_tokens=2))
        rows = dict(step(sched))
        if "long" not in rows:
            sat_out_at.append(i)
        elif rows.get(f"p{n}") == 4:
            mixed_prompts += 1
    stats = sched.stats
    assert stats.num_prefill_first_steps == len(sat_out_at)
    assert stats.num_prefill_first_capped == mixed_prompts > 0
    assert sat_out_at[:int(SIT_OUT_BURST)] == [0, 2, 4, 6]  # the burst: every arrival first
    # After it (and what the burst's decode steps refilled), the decode rows run about 1/share
    # steps between sit-outs (one fewer when the bucket carries a fraction over), and the bucket
    # is the only bound: every sit-out it allows is taken.
    gaps = [b - a - 1 for a, b in zip(sat_out_at[4:], sat_out_at[5:], strict=False)]
    assert len(gaps) >= 10 and all(gap >= 1 / share - 1 for gap in gaps)
    expected = SIT_OUT_BURST + (num_steps - len(sat_out_at)) * share
    assert expected - 1 <= len(sat_out_at) <= expected
    assert mixed_prompts + len(sat_out_at) == n


def test_share_refills_on_overlapped_decode_steps():
    """Steps planned ahead (overlap scheduling) are decode steps too: they refill the bucket."""
    sched = make(limit=16, share=0.5)
    sched.prefill_first.credit = 0.0
    sched.add(req("a", [3, 4, 5], max_tokens=50))
    out = sched.schedule()
    ahead = sched.schedule_ahead(out)
    assert ahead is not None and sched.prefill_first.credit == 0.5
    sched.update(out, {"a": [7]})
    sched.update(ahead, {"a": [8]})
    assert sched.prefill_first.credit == 0.5
    sched.add(req("b", [9, 9, 9]))
    assert step(sched) == [("a", 1), ("b", 3)]  # half a sit-out: mixed, and counted
    assert sched.stats.num_prefill_first_capped == 1 and sched.prefill_first.credit == 1.0
    sched.add(req("c", [8, 8]))
    assert step(sched) == [("c", 2)]


def test_engine_config_validates_and_passes_it_on():
    with pytest.raises(ValueError, match="prefill_first_tokens"):
        EngineConfig(prefill_first_tokens=-1)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="prefill_first_max_share"):
            EngineConfig(prefill_first_max_share=bad)
    config = EngineConfig(prefill_first_tokens=1024,
                          prefill_first_max_share=0.25).scheduler_config(64, 256)
    assert config.prefill_first_tokens == 1024 and config.prefill_first_max_share == 0.25


def test_greedy_tokens_equal_the_mixed_engine(tiny_qwen3_path):
    """Real forwards on the tiny model: a request arriving while two decode runs alone for one
    step, and every request's greedy tokens equal those of the always-mixed engine."""
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = [[3 + i, 40 + 7 * i, 99, 12 + i, 8] * (2 + i) for i in range(3)]

    def run(limit: int) -> tuple[dict[str, list[int]], list[int]]:
        llm = LLM(tiny_qwen3_path, max_num_seqs=4, enforce_eager=True,
                  prefill_first_tokens=limit)
        core, got, sizes = llm.engine, {}, []
        schedule = core.scheduler.schedule

        def recorded():
            out = schedule()
            sizes.append(len(out.requests))
            return out

        core.scheduler.schedule = recorded
        for i, prompt in enumerate(prompts[:2]):
            core.add_request(f"r{i}", prompt, params)
        for i in range(40):
            if i == 3:
                core.add_request("r2", prompts[2], params)
            for out in core.step():
                got.setdefault(out.request_id, []).extend(out.new_token_ids)
        assert not core.has_unfinished()
        core.scheduler.check_integrity()
        return got, sizes

    mixed, mixed_sizes = run(0)
    first, first_sizes = run(64)
    assert first == mixed and sorted(first) == ["r0", "r1", "r2"]
    assert all(len(tokens) == 8 for tokens in first.values())
    # Step 4 admits r2 while r0 and r1 decode: alone with the policy, mixed without.
    assert mixed_sizes[3] == 3 and first_sizes[3] == 1 and first_sizes[4] == 3


def test_scheduler_policy_counters_reach_the_metrics():
    from engine.ipc import EngineStats
    from runtime.metrics import Metrics

    metrics = Metrics()
    metrics.observe_engine(EngineStats(
        num_running=0, num_waiting=0, num_free_pages=1, num_cached_pages=0, num_total_pages=1,
        num_computed_tokens=0, num_cached_tokens=0, num_preemptions=0,
        num_prefill_first_steps=3, num_prefill_first_capped=2, num_ahead_held_steps=5))
    value = metrics.registry.get_sample_value
    assert value("agentspeed_prefill_first_steps") == 3
    assert value("agentspeed_prefill_first_capped_steps") == 2
    assert value("agentspeed_ahead_held_steps") == 5

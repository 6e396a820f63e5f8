"""Overlap scheduling: the next decode step is planned and launched before the host sees the
tokens of the current one. On CPU nothing actually overlaps (torch runs synchronously), but the
bookkeeping is the same, so outputs must equal the plain loop's token for token."""

from __future__ import annotations

import pytest

from engine.config import SchedulerConfig
from engine.llm import LLM
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

PS = 4


def make_scheduler(num_pages: int = 32) -> Scheduler:
    return Scheduler(SchedulerConfig(num_pages=num_pages, page_size=PS, max_model_len=256,
                                     max_num_seqs=8, max_num_batched_tokens=64))


def request(rid: str, prompt: list[int], max_tokens: int = 8) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), [0], 256)


def test_schedule_ahead_plans_one_token_per_sampling_request():
    sched = make_scheduler()
    a, b = request("a", list(range(1, 8))), request("b", list(range(1, 4)), max_tokens=1)
    sched.add(a)
    sched.add(b)
    prev = sched.schedule()
    ahead = sched.schedule_ahead(prev)
    # b's only token is the one prev samples: it gets no row; a decodes position 7 from row 0.
    assert [(s.request.request_id, s.start, s.num_new_tokens, s.prev_row)
            for s in ahead.requests] == [("a", 7, 1, 0)]
    assert len(a.page_ids) == 2  # position 7 is the last slot of page 2: no new page yet
    sched.update(prev, {"a": [5], "b": [6]})
    assert b.is_finished and a.output_ids == [5]
    sched.update(ahead, {"a": [9]})
    assert a.output_ids == [5, 9] and a.num_computed_tokens == 8
    sched.check_integrity()


def test_schedule_ahead_declines_when_a_plain_step_would_differ():
    sched = make_scheduler()
    a = request("a", list(range(1, 6)))
    sched.add(a)
    prev = sched.schedule()
    sched.add(request("b", [1, 2, 3]))  # a waiting request must be admitted by schedule()
    assert sched.schedule_ahead(prev) is None
    sched.update(prev, {"a": [7]})
    sched.check_integrity()


def test_schedule_ahead_declines_without_free_pages():
    sched = make_scheduler(num_pages=4)  # page 0 is scratch: three pages of 4 tokens
    a = request("a", list(range(1, 9)))  # fills two pages; its next token needs another
    b = request("b", [1, 2, 3])  # takes the last one
    sched.add(a)
    sched.add(b)
    prev = sched.schedule()
    assert sched.pool.num_free == 0
    assert sched.schedule_ahead(prev) is None
    assert a.page_ids == [1, 2] and b.page_ids == [3]


@pytest.fixture(scope="module")
def engines(tiny_qwen3_path):
    plain = LLM(tiny_qwen3_path, overlap_schedule=False, max_num_seqs=4, enforce_eager=True)
    overlap = LLM(tiny_qwen3_path, overlap_schedule=True, max_num_seqs=4, enforce_eager=True)
    return plain, overlap


def mixed_params() -> list[SamplingParams]:
    return [
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True),
        SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=17, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[5, 9, 11, 13, 17]),
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.0, max_tokens=15, ignore_eos=True, frequency_penalty=0.5),
    ]


def test_overlap_outputs_equal_the_plain_loop(engines):
    plain, overlap = engines
    prompts = [[3 + i, 40 + 7 * i, 99, 12 + i, 8] * (1 + i) for i in range(6)]
    params = mixed_params()
    want = plain.generate(prompts, params)
    got = overlap.generate(prompts, params)
    for w, g in zip(want, got):
        assert g.token_ids == w.token_ids and g.finish_reason == w.finish_reason
    assert got[3].finish_reason == "stop" or len(got[3].token_ids) == 30
    overlap.engine.scheduler.check_integrity()
    assert overlap.engine.scheduler.pool.num_free == plain.engine.scheduler.pool.num_free
    assert not overlap.engine.has_unfinished()


def test_greedy_batch_runs_ahead_every_decode_step(engines):
    _, overlap = engines
    core = overlap.engine
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    for i in range(3):
        core.add_request(f"ahead-{i}", [5 + i, 6, 7, 8, 9], params)
    ahead_steps = 0
    while core.has_unfinished():
        core.step()
        ahead_steps += core._in_flight is not None
    # Step 1 prefills (and samples), then 9 decode steps each queued behind the previous one;
    # the last needs no successor.
    assert ahead_steps == 9
    core.scheduler.check_integrity()


def test_abort_while_a_step_is_in_flight_frees_everything(engines):
    _, overlap = engines
    core = overlap.engine
    params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
    core.add_request("stay", list(range(20, 40)), params)
    core.add_request("go", list(range(40, 60)), params)
    core.step()
    core.step()
    assert core._in_flight is not None
    assert core.abort("go").finish_reason == "abort"
    outputs = []
    while core.has_unfinished():
        outputs.extend(core.step())
    assert {o.request_id for o in outputs} == {"stay"}
    assert sum(len(o.new_token_ids) for o in outputs) == 48  # 2 of 50 before the abort
    assert not core.scheduler.running and core._in_flight is None
    core.scheduler.check_integrity()


def test_input_arriving_holds_back_the_step_ahead(engines):
    """With input waiting at every step (engine.ahead_pacer), nothing is queued ahead, and the
    outputs still equal the plain loop's."""
    plain, overlap = engines
    core = overlap.engine
    prompts = [[3 + i, 40 + 7 * i, 99, 12 + i, 8] * (1 + i) for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True)
    want = plain.generate(prompts, params)
    core.watch_input(lambda timeout_s: True)
    held = core.pacer.held
    try:
        for i, prompt in enumerate(prompts):
            core.add_request(f"held-{i}", prompt, params)
        got: dict[str, list[int]] = {}
        while core.has_unfinished():
            for out in core.step():
                got.setdefault(out.request_id, []).extend(out.new_token_ids)
            assert core._in_flight is None
    finally:
        core.watch_input(None)
    assert core.pacer.held - held == 9  # at the prefill and at each of the 8 decode steps
    assert [got[f"held-{i}"] for i in range(3)] == [w.token_ids for w in want]
    core.scheduler.check_integrity()

"""Speculative decoding: greedy outputs are token-identical with and without drafts, no KV is
ever copied, stops land exactly, rejection sampling keeps the target distribution."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from engine.config import SchedulerConfig
from engine.llm import LLM
from engine.request import FinishReason, Request
from engine.sampler import Sampler, SampleRow
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.spec import DraftContext, SpecDecoder
from engine.spec.base import Drafter
from engine.spec.manager import MIN_STEPS
from engine.spec.ngram import NgramDrafter
from engine.spec.suffix import SuffixDrafter
from engine.spec.verify import verify
from tools.constrained import FunctionSchema, NamedToolChoice, tool_call_grammar
from tools.parsers.base import fold_events
from tools.parsers.hermes import HermesToolParser

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
TOOL_CALL = ('<tool_call>\n{"name": "read_file", "arguments": {"path": "src/app.py", '
             '"lines": [1, 40]}}\n</tool_call>')


@pytest.fixture(scope="module")
def llm(default_model_path):
    # No prefix caching: every run computes its own KV, so any copied slot would be ours.
    return LLM(default_model_path, page_size=16, num_pages=512, enable_prefix_caching=False,
               speculative_drafter="suffix", num_speculative_tokens=6)


@pytest.fixture(scope="module")
def prompts(llm):
    transcript = json.loads((DATA / "echo_json.json").read_text())["messages"]
    tool_turn = [
        {"role": "system", "content": "You call tools by writing <tool_call> blocks with JSON."},
        {"role": "user", "content": "Read src/app.py."},
        {"role": "assistant", "content": TOOL_CALL},
        {"role": "user", "content": "The read failed. Repeat exactly the same tool call block, "
                                    "nothing else."},
    ]
    return [
        llm.apply_chat_template(transcript),
        llm.apply_chat_template(tool_turn),
        llm.apply_chat_template([{"role": "user", "content": "Name three colours."}]),
    ]


def greedy(max_tokens: int = 24, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


@pytest.fixture(scope="module")
def baseline(llm, prompts):
    return [o.token_ids for o in llm.generate(prompts, greedy(speculative=False))]


def check_engine(llm):
    llm.engine.scheduler.check_integrity()
    assert not llm.engine.has_unfinished()
    assert llm.engine.runner.kv_cache.num_copied_slots == 0, "speculation copied KV"


@pytest.mark.parametrize("drafter", ["suffix", "ngram"])
def test_greedy_identical_for_every_draft_length(llm, prompts, baseline, drafter):
    llm.engine.spec = SpecDecoder(drafter, 6)
    lengths = [(1, 4), (2, 5), (3, 6)]  # per prompt: every length 1..6 runs on some prompt
    batch = [p for p, ks in zip(prompts, lengths) for _ in ks]
    expected = [b for b, ks in zip(baseline, lengths) for _ in ks]
    params = [greedy(num_speculative_tokens=k) for ks in lengths for k in ks]
    outs = llm.generate(batch, params)
    for i, (out, ref) in enumerate(zip(outs, expected)):
        assert out.token_ids == ref, (drafter, i, params[i].num_speculative_tokens)
    stats = llm.engine.spec.stats
    assert stats.num_verify_steps > 0 and stats.num_accepted_tokens > 0
    check_engine(llm)


def test_self_drafter_greedy_identical(llm, prompts, baseline):
    # Half the layers draft (engine.spec.self_spec): mostly rejected on this small model, some
    # accepted; opted out of the back-off so every step drafts. Many prompts and lengths run on
    # the tiny model (tests/engine/test_self_spec.py); a draft token costs ~half a forward here.
    llm.engine.spec = SpecDecoder("self", 6, DraftContext(llm.engine.runner.model))
    params = [greedy(16, num_speculative_tokens=k, speculative=True) for k in (5, 2)]
    outs = llm.generate(prompts[1:], params)
    assert [o.token_ids for o in outs] == [b[:16] for b in baseline[1:]]
    stats = llm.engine.spec.stats
    assert stats.num_draft_tokens >= 40 and stats.num_accepted_tokens > 0, stats
    check_engine(llm)


def test_mean_accepted_length_on_repetitive_transcript(llm, prompts, baseline):
    llm.engine.spec = SpecDecoder("suffix", 4)
    out = llm.generate([prompts[0]], greedy())[0]
    assert out.token_ids == baseline[0]
    stats = llm.engine.spec.stats
    assert stats.mean_accepted_len > 2.0, stats
    assert stats.propose_time_s / stats.num_proposals < 2e-3, "drafting costs > 2 ms a step"
    check_engine(llm)


def test_stops_inside_an_accepted_run(llm, prompts, baseline):
    ids = baseline[0]
    llm.engine.spec = SpecDecoder("suffix", 6)
    # max_tokens lands in the middle of a multi-token acceptance.
    out = llm.generate([prompts[0]], greedy(max_tokens=7))[0]
    assert out.token_ids == ids[:7] and out.finish_reason == "length"
    # A stop token (the EOS path: both are request.stop_ids) far into the copied JSON.
    pos = next(i for i in range(10, len(ids)) if ids[i] not in ids[:i])
    out = llm.generate([prompts[0]], greedy(stop_token_ids=[ids[pos]]))[0]
    assert out.token_ids == ids[: pos + 1] and out.finish_reason == "stop"
    # A stop string: text after it is dropped even when its tokens were accepted together.
    text = llm.tokenizer.decode(ids)
    stop = text[len(text) // 2 : len(text) // 2 + 5]
    out, plain = llm.generate([prompts[0]] * 2, [
        greedy(stop=[stop], logprobs=0), greedy(stop=[stop], logprobs=0, speculative=False)])
    assert out.text == text[: text.index(stop)] and out.finish_reason == "stop"
    # Tokens accepted after the one that completed the stop string are not output (nor billed).
    assert out.token_ids == plain.token_ids and len(out.logprobs) == len(plain.token_ids)
    assert llm.engine.spec.stats.mean_accepted_len > 1.5
    check_engine(llm)


def test_tool_call_streaming_reassembles(llm, prompts, baseline):
    llm.engine.spec = SpecDecoder("suffix", 6)
    parser, events, text, multi = HermesToolParser(), [], "", False
    for out in llm.stream(prompts[1], greedy(48)):
        multi |= len(out.delta_token_ids) > 1
        text += out.delta_text
        events += parser.feed(out.delta_text)
    events += parser.finish()
    assert multi, "no step accepted a draft"
    assert out.token_ids[:24] == baseline[1]
    assert text == out.text
    parsed = fold_events(events)
    expected = HermesToolParser.parse(text)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        (c.name, c.arguments) for c in expected.tool_calls]
    assert parsed.content == expected.content
    assert [c.name for c in parsed.tool_calls] == ["read_file"]
    check_engine(llm)


class _Oracle(Drafter):
    """Drafts a known output (the right continuation), with ``bad`` written over its third
    draft when given: every drafted row's mask must be right for these to be accepted."""

    def __init__(self, output: list[int], bad: int | None = None) -> None:
        super().__init__(6)
        self.output, self.bad = output, bad

    def propose(self, request, max_len):
        done = len(request.output_ids)
        draft = self.output[done : done + min(max_len, self.max_draft_len)]
        if self.bad is not None and len(draft) > 2:
            draft[2] = self.bad
        return draft


def test_constrained_requests_speculate_with_a_mask_per_draft(llm, prompts):
    read_file = FunctionSchema("read_file", {
        "type": "object", "additionalProperties": False, "required": ["path", "lines"],
        "properties": {"path": {"type": "string"},
                       "lines": {"type": "array", "items": {"type": "integer"}}}})
    grammar = tool_call_grammar([read_file], NamedToolChoice("read_file"))
    plain = llm.generate([prompts[1]], greedy(48, grammar=grammar, speculative=False))[0]
    (call,) = HermesToolParser.parse(plain.text).tool_calls
    assert call.name == "read_file" and plain.finish_reason == "stop"
    eos = llm.engine.eos_token_ids[0]
    # Copies of the earlier call; the exact output, ending in an accepted stop token; the same
    # with a stop token mid-call, which the grammar refuses (so the rows after it go unmasked).
    for drafter in (SuffixDrafter(6), _Oracle(plain.token_ids), _Oracle(plain.token_ids, eos)):
        llm.engine.spec = SpecDecoder(drafter, 6)
        out = llm.generate([prompts[1]], greedy(48, grammar=grammar, speculative=True))[0]
        assert out.token_ids == plain.token_ids, type(drafter).__name__
        assert llm.engine.spec.stats.num_accepted_tokens > 0, type(drafter).__name__
    # Sampled: every emitted token is one the grammar allowed (the runner asserts each).
    llm.engine.spec = SpecDecoder("suffix", 6)
    sampled = llm.generate([prompts[1]], SamplingParams(temperature=1.0, seed=3, max_tokens=48,
                                                        grammar=grammar, speculative=True))[0]
    if sampled.finish_reason == "stop":
        (call,) = HermesToolParser.parse(sampled.text).tool_calls
        assert set(json.loads(call.arguments)) == {"path", "lines"}
    check_engine(llm)


# ------------------------------------------------------------------ no model below
_IDS = itertools.count()


def make_request(prompt, output=(), max_tokens=None, request_id=None, **kw):
    request_id = request_id or f"r{next(_IDS)}"
    params = SamplingParams(max_tokens=max_tokens, **kw)
    request = Request(request_id, list(prompt), params, [2], 1000)
    request.output_ids = list(output)
    return request


def test_scheduler_drops_tokens_after_a_finishing_one():
    sched = Scheduler(SchedulerConfig(num_pages=9, page_size=4, max_model_len=64,
                                      enable_prefix_caching=False))
    request = make_request([5, 6, 7], request_id="r", stop_token_ids=[99])
    sched.add(request)
    out = sched.schedule()
    sched.update(out, {"r": [8]})
    assert request.num_computed_tokens == 3
    request.draft_ids = [9, 99, 11, 12]
    out = sched.schedule()
    (scheduled,) = out.requests
    assert (scheduled.start, scheduled.num_new_tokens) == (3, 5)
    assert scheduled.draft_ids == [9, 99, 11, 12]
    assert request.page_ids == [1, 2] and request.draft_ids == []
    sched.update(out, {"r": [9, 99, 11]})  # two drafts accepted, the stop token among them
    assert request.output_ids == [8, 9, 99] and request.finish_reason is FinishReason.STOP
    assert sched.pool.num_free == 8 and not sched.running
    sched.check_integrity()


def test_scheduler_trims_drafts_to_max_tokens_and_counts_accepted_kv():
    sched = Scheduler(SchedulerConfig(num_pages=9, page_size=4, max_model_len=64,
                                      enable_prefix_caching=False))
    request = make_request([5, 6, 7], max_tokens=4, request_id="r")
    sched.add(request)
    sched.update(sched.schedule(), {"r": [8]})
    request.draft_ids = [1, 2, 3, 4, 5]
    out = sched.schedule()
    assert out.requests[0].draft_ids == [1, 2]  # 3 tokens may still come: 2 drafts + 1
    sched.update(out, {"r": [1, 4]})  # one accepted, then the target's own token
    assert request.output_ids == [8, 1, 4] and request.num_computed_tokens == 5
    assert request.num_tokens == 6 and not request.is_finished
    sched.check_integrity()


def test_suffix_drafter_follows_repeats_and_adapts_length():
    drafter = SuffixDrafter(6)
    text = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    request = make_request(text + [1, 2] + text[:3])
    assert drafter.propose(request, 6) == [13, 14, 15, 16, 17, 18]
    assert drafter.propose(request, 2) == [13, 14]
    assert drafter.propose(make_request([1, 2, 3, 4]), 6) == []
    # A context seen with two different continuations drafts the frequent one, briefly.
    noisy = make_request([7, 8, 1, 7, 8, 2, 7, 8, 1, 9, 7, 8])
    assert drafter.propose(noisy, 6)[:1] == [1]
    # Finished outputs feed a bounded global index that other requests draft from.
    done = make_request([3, 3], output=[40, 41, 42, 43, 44])
    drafter.release(done)
    assert drafter.propose(make_request([9, 40, 41]), 3) == [42, 43, 44]
    small = SuffixDrafter(4, global_max_tokens=4)
    for i in range(5):
        small.release(make_request([0], output=[100 + i, 200 + i, 300 + i]))
    assert small.global_index.num_tokens <= 4 + 3


def test_ngram_drafter_uses_latest_occurrence():
    drafter = NgramDrafter(3)
    request = make_request([1, 2, 3, 4, 1, 2, 5, 6, 7, 1, 2])
    assert drafter.propose(request, 3) == [5, 6, 7]
    request.output_ids = [5]
    assert drafter.propose(request, 3) == [6, 7, 1]


class _WrongDrafter(Drafter):
    def propose(self, request, max_len):
        return [0] * max_len


def test_backoff_after_low_acceptance():
    spec = SpecDecoder(_WrongDrafter(4), 4)
    request = make_request([5, 6, 7], output=[8])
    request.num_computed_tokens = 3
    for _ in range(MIN_STEPS):
        spec.propose([request])
        assert request.draft_ids == [0, 0, 0, 0]
        spec.observe(request, 4, 1)
    spec.propose([request])
    assert request.draft_ids == [], "low acceptance must pause drafting"
    request.params.speculative = True  # opted in: no back-off
    spec2 = SpecDecoder(_WrongDrafter(4), 4)
    request.params.num_speculative_tokens = 0  # ... but zero drafts per step: off
    spec2.propose([request])
    assert request.draft_ids == []
    request.params.num_speculative_tokens = 2
    spec2.propose([request])
    assert request.draft_ids == [0, 0]
    request.params.num_speculative_tokens = None
    for _ in range(MIN_STEPS + 1):
        spec2.propose([request])
        assert request.draft_ids == [0, 0, 0, 0]
        spec2.observe(request, 4, 1)


# ------------------------------------------------------- rejection sampling (sampler level)
@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0),
                                    SamplingParams(temperature=0.7, top_k=4)])
def test_rejection_sampling_keeps_the_target_distribution(params):
    torch.manual_seed(0)
    vocab, n = 6, 40000
    rows_logits = torch.tensor([[1.0, 0.5, 2.0, -1.0, 0.0, 0.3],
                                [0.2, 1.5, -0.5, 0.8, 0.0, 1.0]])
    draft = [2, 1]  # the first draft is likely, the second less so
    logits = torch.cat([torch.cat([rows_logits, rows_logits[1:]])] * n)  # (3 n, vocab)
    rows = [SampleRow(params, [0], [], None)] * n
    results = verify(Sampler(), logits, rows, [draft] * n)

    def target(row):
        scaled = rows_logits[row] / params.temperature
        if params.top_k:
            scaled[scaled < scaled.topk(params.top_k).values[-1]] = float("-inf")
        return scaled.softmax(-1)

    def chi2(samples, probs):
        counts = torch.bincount(torch.tensor(samples), minlength=vocab).double()
        expected = probs.double() * len(samples)
        keep = expected > 0
        assert counts[~keep].sum() == 0, "a filtered token was emitted"
        return (((counts - expected)[keep] ** 2) / expected[keep]).sum().item(), int(keep.sum())

    first = [r[0].token_id for r in results]
    stat, k = chi2(first, target(0))
    assert stat < 25.0, f"first token off the target distribution: chi2 {stat} over {k} bins"
    second = [r[1].token_id for r in results if len(r) > 1]
    assert abs(len(second) / n - target(0)[draft[0]].item()) < 0.01, "acceptance rate != p(d)"
    stat, k = chi2(second, target(1))
    assert stat < 25.0, f"second token off the target distribution: chi2 {stat} over {k} bins"

"""The offline API end to end on real weights: token-exact against HF transformers, batching,
prefix reuse, chunked prefill and preemption all leave greedy outputs unchanged."""

from __future__ import annotations

import pytest
import torch

from engine.errors import ContextLengthError, InvalidRequestError
from engine.llm import LLM
from engine.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=64)
EOS = 2  # SmolLM2's <|im_end|>
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why they are prime.",
    "Translate 'good morning' into Spanish and German.",
    "Give me a Python function that reverses a string.",
]


@pytest.fixture(scope="module")
def llm(default_model_path):
    return LLM(default_model_path, page_size=16, num_pages=512)


@pytest.fixture(scope="module")
def chat_prompts(llm):
    return [llm.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]


def hf_greedy(path, prompt_ids, max_new_tokens):
    """transformers' greedy continuation of each prompt, one at a time, never stopping at EOS."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    outs = []
    with torch.inference_mode():
        for ids in prompt_ids:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
            outs.append(gen[0, len(ids):].tolist())
    return outs


def check_engine(llm):
    llm.engine.scheduler.check_integrity()
    assert not llm.engine.has_unfinished()


@pytest.mark.slow
def test_greedy_matches_transformers_default_model(llm, chat_prompts, default_model_path):
    # 5 prompts x 64 new tokens each: EOS is ignored on both sides, so no prompt stops short.
    expected = hf_greedy(default_model_path, chat_prompts, 64)
    assert [len(ref) for ref in expected] == [64] * 5
    got = llm.generate(chat_prompts, SamplingParams(temperature=0.0, max_tokens=64,
                                                    ignore_eos=True))
    for out, ref in zip(got, expected):
        assert out.token_ids == ref
        assert out.finish_reason == "length"
    check_engine(llm)


def test_greedy_matches_transformers_tiny_qwen3(tiny_qwen3_path):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 49152, (n,), generator=g).tolist() for n in (7, 33)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    tiny = LLM(tiny_qwen3_path, page_size=4, num_pages=64)
    got = [o.token_ids for o in tiny.generate(prompts, params)]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_path, dtype=torch.float32).eval()
    for ids, out in zip(prompts, got):
        gen = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        assert out == gen[0, len(ids):].tolist()
    check_engine(tiny)


@pytest.mark.slow
def test_concurrent_requests_equal_alone(default_model_path, llm):
    questions = [
        "Hi!",
        "Name one colour.",
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers and explain why they are prime.",
        "Give me a Python function that reverses a string, with a docstring.",
        "In two short sentences, explain to a ten-year-old why the sky is blue by day and turns "
        "red at sunset.",
        "Summarise the plot of Romeo and Juliet in three sentences, then name two other plays by "
        "the same author and the year each was first performed.",
    ]
    prompts = [llm.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    assert len({len(p) for p in prompts}) == 8, "8 prompts of 8 different lengths"
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    # No prefix cache: every run, alone or together, prefills its whole prompt.
    engine = LLM(default_model_path, page_size=16, num_pages=512, enable_prefix_caching=False)
    alone = [engine.generate([p], params)[0].token_ids for p in prompts]
    stats = engine.engine.scheduler.stats
    before = stats.num_computed_tokens
    together = engine.generate(prompts, params)
    assert [o.token_ids for o in together] == alone
    # Every prompt token went through the model in the batched run (23 decode steps each).
    assert stats.num_computed_tokens - before == sum(map(len, prompts)) + 8 * 23
    assert all(o.num_cached_tokens == 0 for o in together)
    check_engine(engine)


def test_ignore_eos_generates_past_the_end_of_sequence(llm, chat_prompts):
    stopped = llm.generate([chat_prompts[0]], GREEDY)[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == EOS
    assert len(stopped.token_ids) < 64
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    out = llm.generate([chat_prompts[0]], params)[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 64
    # The same greedy path up to and including the EOS, then 64 - len(stopped) tokens past it.
    assert out.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    check_engine(llm)


def test_shared_prefix_computes_only_the_suffix(default_model_path):
    prefix = list(range(1000, 1500))  # 500 tokens
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    cached = LLM(default_model_path, page_size=16, num_pages=256)
    cached.generate([prefix + [42, 43]], params)
    stats = cached.engine.scheduler.stats
    before = stats.num_computed_tokens
    out = cached.generate([prefix + [77, 78, 79]], params)[0]
    # 3 new prompt tokens + 7 decode steps (the 8th token needs no forward of its own).
    assert stats.num_computed_tokens - before == 3 + 7
    assert out.num_cached_tokens == 500
    uncached = LLM(default_model_path, page_size=16, num_pages=256, enable_prefix_caching=False)
    ref = uncached.generate([prefix + [77, 78, 79]], params)[0]
    assert ref.num_cached_tokens == 0 and out.token_ids == ref.token_ids
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.cached_tokens,
            out.usage.total_tokens) == (503, 8, 500, 511)
    assert (ref.usage.prompt_tokens, ref.usage.cached_tokens) == (503, 0)
    check_engine(cached)
    check_engine(uncached)


def test_chunked_prefill_equals_unchunked(default_model_path, chat_prompts):
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    long_prompt = sum(chat_prompts, [])  # a few hundred tokens
    whole = LLM(default_model_path, num_pages=128, max_num_batched_tokens=4096,
                enable_prefix_caching=False)
    chunked = LLM(default_model_path, num_pages=128, max_num_batched_tokens=64,
                  enable_prefix_caching=False)
    assert (chunked.generate([long_prompt], params)[0].token_ids
            == whole.generate([long_prompt], params)[0].token_ids)
    check_engine(chunked)
    check_engine(whole)


def test_pool_too_small_preempts_and_all_finish_correctly(default_model_path, llm, chat_prompts):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [chat_prompts[i % 5][: 20 + 3 * i] for i in range(16)]
    expected = [o.token_ids for o in llm.generate(prompts, params)]
    small = LLM(default_model_path, page_size=8, num_pages=40, max_num_batched_tokens=128)
    got = [o.token_ids for o in small.generate(prompts, params)]
    assert got == expected
    assert small.engine.scheduler.stats.num_preemptions > 0
    check_engine(small)


def test_stream_reassembles_and_abort_on_close(llm, chat_prompts):
    full = llm.generate([chat_prompts[1]], GREEDY)[0]
    deltas = list(llm.stream(chat_prompts[1], GREEDY))
    assert "".join(d.delta_text for d in deltas) == full.text
    assert deltas[-1].finished and deltas[-1].token_ids == full.token_ids
    it = llm.stream(chat_prompts[2], GREEDY)
    next(it)
    it.close()
    check_engine(llm)


def test_stop_string_and_stop_token(llm, chat_prompts):
    full = llm.generate([chat_prompts[0]], GREEDY)[0]
    word = full.text.split()[2]
    out = llm.generate([chat_prompts[0]], SamplingParams(temperature=0.0, max_tokens=64,
                                                          stop=[word]))[0]
    assert out.finish_reason == "stop" and out.text == full.text[: full.text.index(word)]
    stop_id = full.token_ids[3]
    out = llm.generate([chat_prompts[0]], SamplingParams(temperature=0.0, max_tokens=64,
                                                          stop_token_ids=[stop_id]))[0]
    assert out.token_ids == full.token_ids[: full.token_ids.index(stop_id) + 1]
    check_engine(llm)


def test_seeded_sampling_reproducible_and_logprobs(llm, chat_prompts):
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=16,
                            logprobs=3)
    a = llm.generate([chat_prompts[3]], params)[0]
    b = llm.generate([chat_prompts[3], chat_prompts[1]], [params, SamplingParams(seed=7)])[0]
    assert a.token_ids == b.token_ids
    assert len(a.logprobs) == len(a.token_ids)
    for lp in a.logprobs:
        assert len(lp.top) == 3 and lp.logprob <= 0.0
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True) and lp.logprob <= values[0] + 1e-6
    check_engine(llm)


@pytest.mark.parametrize(
    "prompt, params, param, too_long",
    [
        ([], SamplingParams(), "prompt", False),
        ([10**9], SamplingParams(), "prompt", False),
        ([1, 2], SamplingParams(temperature=-1), "temperature", False),
        ([1, 2], SamplingParams(top_p=0), "top_p", False),
        ([1, 2], SamplingParams(max_tokens=0), "max_tokens", False),
        ([1, 2], SamplingParams(logprobs=99), "logprobs", False),
        # The offline API has no "messages": a prompt over the context is the prompt's fault.
        ([1] * 9000, SamplingParams(), "prompt", True),
        ([1, 2], SamplingParams(max_tokens=10**6), "max_tokens", True),
    ],
)
def test_bad_input_is_refused_and_engine_unharmed(llm, prompt, params, param, too_long):
    with pytest.raises(InvalidRequestError) as err:
        llm.generate([[5, 6, 7], prompt], params)
    assert err.value.param == param
    assert isinstance(err.value, ContextLengthError) == too_long
    assert (err.value.code == "context_length_exceeded") == too_long
    check_engine(llm)
    assert llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=2))[0].token_ids

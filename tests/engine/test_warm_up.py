"""The runner's eager warm-up (run at start-up on CUDA, so no serving step builds a kernel):
it writes nowhere but the scratch page, and serving after it is unchanged."""

from __future__ import annotations

import torch

from engine.cuda_graphs import SCRATCH_PAGE
from engine.llm import LLM
from engine.sampling_params import SamplingParams


def test_eager_warm_up_touches_only_the_scratch_page(tiny_qwen3_path) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = [[5, 6, 7] * 9, [8, 9] * 20]
    expected = LLM(tiny_qwen3_path, page_size=16, num_pages=64).generate(prompts, greedy)
    llm = LLM(tiny_qwen3_path, page_size=16, num_pages=64)
    runner = llm.engine.runner
    pages = runner.kv_cache.k_pages + runner.kv_cache.v_pages
    torch.manual_seed(0)
    for t in pages:
        t.normal_()  # a wrong write anywhere shows up as a changed value
    before = [t.clone() for t in pages]
    runner.warm_up_eager()
    others = [p for p in range(runner.kv_cache.num_pages) if p != SCRATCH_PAGE]
    for old, new in zip(before, pages):
        assert torch.equal(old[others], new[others])
        assert not torch.equal(old[SCRATCH_PAGE], new[SCRATCH_PAGE])  # it did write its KV
    got = llm.generate(prompts, greedy)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]

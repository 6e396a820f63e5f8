"""Self-speculation (``engine.spec.self_spec``) through the draft-model interface: its drafts are
the truncated target's greedy tokens however the request grew (so its incremental KV is right),
and speculating with it never changes a greedy output."""

from __future__ import annotations

import random

import pytest
import torch

from engine.config import DRAFTERS
from engine.llm import LLM
from engine.loader import load_model
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.spec import DraftContext, available_drafters, create_drafter
from engine.spec import draft_model as draft_model_module
from engine.spec.self_spec import SelfSpecDrafter
from tests.conftest import TINY_VOCAB


@pytest.fixture(scope="module")
def target(tiny_qwen3_path):
    model, _ = load_model(tiny_qwen3_path, torch.float32, "cpu")
    return model


@pytest.fixture(scope="module")
def hf_model(tiny_qwen3_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_qwen3_path, dtype=torch.float32).eval()


@torch.inference_mode()
def truncated_greedy(hf_model, tokens: list[int], num_layers: int, k: int) -> list[int]:
    """``k`` greedy tokens of the HF model cut to its first ``num_layers`` layers (then its final
    norm and head), each from a fresh full forward over everything so far: no cache at all."""
    full = hf_model.config.num_hidden_layers
    hf_model.config.num_hidden_layers = num_layers  # HF runs layers[:num_hidden_layers]
    try:
        ids = list(tokens)
        for _ in range(k):
            logits = hf_model(torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
    finally:
        hf_model.config.num_hidden_layers = full
    return ids[len(tokens):]


@pytest.mark.parametrize("num_layers", [1, 2])
def test_drafts_equal_the_truncated_model_run_from_scratch(monkeypatch, target, hf_model,
                                                           num_layers):
    # Small chunks and buffers: catch-up runs offset-causal chunks, and the KV buffer grows.
    monkeypatch.setattr(draft_model_module, "PREFILL_CHUNK", 7)
    monkeypatch.setattr(draft_model_module, "MIN_CAPACITY", 16)
    drafter = SelfSpecDrafter(4, DraftContext(target, num_layers))
    rng = random.Random(num_layers)
    request = Request("r", [rng.randrange(TINY_VOCAB) for _ in range(20)], SamplingParams(),
                      [2], 512)
    # Per round: drafts the target accepts, then tokens appended with no proposal in between.
    for num_accepted, num_unseen in [(4, 0), (0, 0), (2, 0), (1, 2), (3, 0), (0, 9), (4, 0)]:
        draft = drafter.propose(request, 4)
        expected = truncated_greedy(hf_model, request.all_ids, num_layers, 4)
        assert draft == expected, (len(request.output_ids), num_accepted)
        bonus = draft[num_accepted] + 1 if num_accepted < 4 else rng.randrange(TINY_VOCAB)
        request.output_ids += draft[:num_accepted] + [bonus % TINY_VOCAB]
        request.output_ids += [rng.randrange(TINY_VOCAB) for _ in range(num_unseen)]
    assert drafter.propose(request, 2) == truncated_greedy(hf_model, request.all_ids,
                                                           num_layers, 2)
    request.max_len = request.num_tokens + 1  # one position left in the window: one draft
    assert len(drafter.propose(request, 4)) == 1
    drafter.release(request)
    assert not drafter._requests, "release keeps no per-request state"


@pytest.mark.parametrize("num_layers", [1, 2])
def test_greedy_identical_with_self_drafts(tiny_qwen3_path, num_layers):
    llm = LLM(tiny_qwen3_path, page_size=8, num_pages=96, enable_prefix_caching=False,
              speculative_drafter="self", speculative_draft_layers=num_layers,
              num_speculative_tokens=5)
    rng = random.Random(0)
    prompts = [[rng.randrange(TINY_VOCAB) for _ in range(n)] for n in (5, 17, 40)]
    plain = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, speculative=False)
    baseline = [o.token_ids for o in llm.generate(prompts, plain)]
    params = [SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, speculative=True,
                             num_speculative_tokens=k) for k in (1, 3, 5)]
    outs = llm.generate(prompts, params)
    for out, ref, p in zip(outs, baseline, params):
        assert out.token_ids == ref, (num_layers, p.num_speculative_tokens)
    stats = llm.engine.spec.stats
    assert stats.num_verify_steps > 0
    if num_layers == 2:  # every layer: the draft is the target's own greedy choice
        assert stats.acceptance_rate > 0.9, stats
        assert stats.mean_accepted_len > 2.5, stats
    assert llm.engine.runner.kv_cache.num_copied_slots == 0, "speculation copied KV"
    assert not llm.engine.spec.drafter._requests, "finished requests left draft state"
    llm.engine.scheduler.check_integrity()


def test_drafter_names_and_refusals(target):
    assert set(DRAFTERS) - {"none"} == set(available_drafters())
    with pytest.raises(ValueError, match="runs a model"):
        create_drafter("self", 4)
    with pytest.raises(ValueError, match="1 to 2 layers"):
        create_drafter("self", 4, DraftContext(target, 3))
    assert create_drafter("self", 4, DraftContext(target)).num_layers == 1  # half of 2

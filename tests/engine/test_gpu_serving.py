"""The engine's serving path on a GPU: long prompts on a cached prefix, grammar masks on CUDA
logits, the pinned host tier, overlap scheduling without host syncs, and no kernel builds after
warm-up. Each test runs ``LLM`` on the tiny random-weight Qwen3 of ``gpu_models``."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from tests.engine.gpu_models import tiny_model_dir

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("attention", ["triton", "flashinfer"])
def test_long_prompt_on_cached_prefix(tmp_path, attention: str) -> None:
    """B2's first turn in small: a long prompt prefilled in chunks on top of a cached prefix
    (partial last page included), on a pool as large as the GPU allows. It must run, reuse the
    prefix and decode, like the same prompt on a cold cache. (Tokens are not compared: the two
    runs cut the prompt into different chunks, so bf16 sums differ in their last bits.) The
    chunks sample nothing, so the host plans each one while the device still runs the ones
    before: FlashInfer's plans faulted here until they waited for their copies."""
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams

    if attention == "flashinfer":
        pytest.importorskip("flashinfer")
    path = tiny_model_dir(tmp_path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**config, "max_position_embeddings": 16384}, f)
    rng = random.Random(3)
    prefix = [rng.randrange(3, 1000) for _ in range(2050)]  # ends inside a page
    prompt = prefix + [rng.randrange(3, 1000) for _ in range(14000)]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = {}
    for warm in (False, True):
        llm = LLM(path, dtype="bfloat16", load_format="dummy", max_model_len=16384,
                  max_num_batched_tokens=2048, attention_backend=attention)
        if warm:
            llm.generate([prefix], SamplingParams(max_tokens=1))
        out = llm.generate([prompt], params)[0]
        torch.cuda.synchronize()
        outs[warm] = out.token_ids
        if warm:
            assert out.num_cached_tokens >= 2048
        llm.engine.scheduler.check_integrity()
        del llm
        torch.cuda.empty_cache()
    assert len(outs[True]) == len(outs[False]) == 8


def test_grammar_constrained_decoding_on_gpu(tmp_path) -> None:
    """xgrammar's token bitmask applied to CUDA logits: even random weights (greedy, sampled)
    produce JSON that matches the schema, next to an unconstrained row in the same batches."""
    pytest.importorskip("xgrammar")
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams
    from engine.structured import allocate_bitmask, apply_bitmask
    from tools.constrained import response_format_grammar

    logits = torch.randn(3, 1000, device="cuda")
    bitmask = allocate_bitmask(3, 1000)
    bitmask.zero_()
    bitmask[1, 0] = 0b1010  # row 1 allows tokens 1 and 3 only; rows 0 and 2 untouched
    masked = logits.clone()
    apply_bitmask(masked, bitmask, rows=[1])
    assert torch.isinf(masked[1]).sum() == 998 and masked[1, 1] == logits[1, 1]
    assert torch.equal(masked[[0, 2]], logits[[0, 2]])

    schema = {"type": "object", "additionalProperties": False, "required": ["name", "legs"],
              "properties": {"name": {"type": "string", "maxLength": 8},
                             "legs": {"enum": [3, 4]}}}
    llm = LLM(tiny_model_dir(tmp_path), dtype="bfloat16", load_format="dummy", num_pages=64,
              max_num_seqs=4)
    spec = response_format_grammar("json_schema", schema)
    params = [SamplingParams(temperature=0.0, max_tokens=64, grammar=spec),
              SamplingParams(temperature=1.0, seed=3, max_tokens=64, grammar=spec),
              SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)]
    outs = llm.generate([[1, 5, 9, 200, 17], [3] * 40, list(range(10, 31))], params)
    for out in outs[:2]:
        assert out.finish_reason == "stop", out.text
        value = json.loads(out.text)
        assert set(value) == {"name", "legs"} and value["legs"] in (3, 4), out.text
        assert isinstance(value["name"], str) and len(value["name"]) <= 8, out.text
    assert len(outs[2].token_ids) == 20
    llm.engine.scheduler.check_integrity()


def test_host_tier_round_trip_through_pinned_memory(tmp_path) -> None:
    """A session past its lease is backed up into pinned host memory; once its device pages are
    evicted, the next turn prefetches it back: the KV it reads is bit-exact."""
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams
    from engine.session_pins import SessionHint

    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm = LLM(tiny_model_dir(tmp_path), dtype="bfloat16", load_format="dummy", num_pages=64,
              page_size=16)
    sched, runner = llm.engine.scheduler, llm.engine.runner
    prompt = list(range(300, 400))
    out = llm.generate([prompt], greedy, sessions=[SessionHint("s", lease_s=600.0)])[0]
    history = prompt + out.token_ids
    kv_tokens = history[:-1]  # the last sampled token has no KV yet

    def path_kv():
        ids = torch.tensor(sched.cache.match_prefix(kv_tokens).pages,
                           device=runner.kv_cache.device)
        return [torch.stack(t).cpu() for t in runner.kv_cache.read_pages(ids)]

    k_ref, v_ref = path_kv()
    sched.sessions.clock = lambda: 1e12  # every lease is over
    llm.engine.step()  # demotion: backed up to the host tier
    k_host, v_host = runner.host_tier.copies["s"]
    assert k_host.is_pinned() and v_host.is_pinned()
    assert torch.equal(k_host, k_ref) and torch.equal(v_host, v_ref)
    sched.pool.free(sched.cache.evict(10**6))  # the device copy is gone
    assert sched.cache.match_prefix(kv_tokens).pages == []
    out = llm.generate([history + [11, 12]], greedy, sessions=[SessionHint("s", lease_s=600.0)])
    assert sched.sessions.stats.num_prefetches == 1  # whole pages come back; the tail is redone
    assert out[0].num_cached_tokens >= len(kv_tokens) // 16 * 16
    k_back, v_back = path_kv()
    assert torch.equal(k_back, k_ref) and torch.equal(v_back, v_ref)
    sched.check_integrity()


def test_launched_decode_steps_never_synchronise(tmp_path) -> None:
    """Overlap scheduling's claim, checked by CUDA itself: with torch's sync debug mode set to
    raise, launching steady-state decode steps (graph replay, on-device greedy sampling, the
    asynchronous copy of the tokens) performs no host synchronisation; the one wait of a step is
    ``collect``'s, on the event behind that copy."""
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams

    llm = LLM(tiny_model_dir(tmp_path), dtype="bfloat16", load_format="dummy", num_pages=64,
              page_size=16, max_num_seqs=4)
    engine, runner = llm.engine, llm.engine.runner
    assert engine.overlap and runner.graphs is not None
    launch, launched = runner.launch, []

    def checked_launch(out, prev=None):
        torch.cuda.set_sync_debug_mode("error")
        try:
            step = launch(out, prev)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        launched.append(prev is not None)
        return step

    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    for i in range(3):
        engine.add_request(f"r{i}", [7 + i] * (20 + 5 * i), greedy)
    for _ in range(3):  # prefill and the first decode steps, unchecked
        engine.step()
    runner.launch = checked_launch
    engine.watch_input(lambda timeout_s: False)  # pacing on, with nothing ever arriving
    try:
        while engine.has_unfinished():
            engine.step()
    finally:
        runner.launch = launch
    assert sum(launched) >= 15, f"only {sum(launched)} steps were launched ahead"
    # The decode steps' device time (CUDA events) feeds the pacing of the step queued ahead.
    step_s = engine.pacer.expected_step_s(3)
    assert step_s is not None and 0 < step_s < 0.1, step_s


def test_new_batch_shapes_build_no_kernel_after_warm_up(tmp_path) -> None:
    """After start-up (graph capture and the eager warm-up), prompts of any length in any batch
    composition — prefills, mixed steps with short and long decode contexts, prefix-cache hits
    — build no new Triton kernel variant (a build mid-serve stalls a step for up to a second):
    index tensors are 16-byte aligned, the page table's width a multiple of 16, split counts
    never compile-time constants, and the warm-up ran each eager variant once."""
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams
    from kernels._triton import built_kernels, num_kernel_builds

    llm = LLM(tiny_model_dir(tmp_path), dtype="bfloat16", load_format="dummy", num_pages=128,
              page_size=16, max_num_seqs=4)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    before = num_kernel_builds()
    assert before > 0, "the build counter saw no Triton kernel at all"
    llm.generate([[5] * 40], greedy)
    llm.generate([[6] * 17, [7] * 33, [9] * 70], greedy)
    # Prefix hits make some of these mixed steps: one-token rows (short, then long contexts:
    # KV splits) beside a prefill.
    for lens in ((9, 71, 35), (130,), (21, 22, 23), (47, 300), (600, 5), (590, 300, 40)):
        llm.generate([[11 + i] * n for i, n in enumerate(lens)], greedy)
    new = built_kernels()[before:]
    assert not new, f"{len(new)} kernels built after warm-up: " + " | ".join(new)

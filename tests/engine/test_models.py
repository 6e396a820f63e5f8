"""Our model modules against HF transformers on the same weights, through the paged KV path."""

from __future__ import annotations

import json
import random
import shutil
from types import SimpleNamespace

import pytest
import torch

from engine.loader import iter_safetensors, load_model
from engine.models.layers import RotaryEmbedding, rope_parameters
from kernels.attention import AttentionBatch, KVCache, create_backend

PAGE_SIZE = 4
NUM_PAGES = 64
VOCAB = 49152


def hf_logits(path: str, ids: list[int]) -> torch.Tensor:  # (len(ids), vocab) float32
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    assert ours.shape == ref.shape
    err = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert err < rel, f"max abs diff is {err:.2e} of the logits scale"


class Paged:
    """Drives a model through the paged cache with pages handed out in a shuffled order."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.cache = KVCache(model.num_layers, NUM_PAGES, PAGE_SIZE, model.num_kv_heads,
                             model.head_dim, torch.float32, "cpu")
        self.attn = create_backend("torch", self.cache, model.num_heads, model.head_dim**-0.5)
        self.free = list(range(NUM_PAGES))
        random.Random(0).shuffle(self.free)  # sequences get scattered, non-contiguous pages

    def run(self, seqs: list[tuple[list[int], int, list[int]]]) -> torch.Tensor:
        """seqs: (page ids, tokens already cached, new token ids) each; pages grow in place.

        Returns the logits of every new token, concatenated in batch order.
        """
        ids, pos, slots = [], [], []
        for pages, start, new in seqs:
            while len(pages) * PAGE_SIZE < start + len(new):
                pages.append(self.free.pop())
            ids += new
            pos += range(start, start + len(new))
            slots += [pages[p // PAGE_SIZE] * PAGE_SIZE + p % PAGE_SIZE
                      for p in range(start, start + len(new))]
        batch = AttentionBatch(
            q_lens=[len(new) for _, _, new in seqs],
            kv_lens=[start + len(new) for _, start, new in seqs],
            page_table=[pages for pages, _, _ in seqs],
            slot_mapping=torch.tensor(slots),
        )
        self.attn.plan(batch)
        with torch.inference_mode():
            hidden = self.model(torch.tensor(ids), torch.tensor(pos), self.attn)
            return self.model.compute_logits(hidden)


@pytest.fixture(params=["tiny_qwen3_path", "tiny_qwen2_path", "tiny_llama_path",
                        "default_model_path"])
def model_path(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param)


def test_logits_match_transformers_prefill_decode_and_batch(model_path: str) -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (40,), generator=g).tolist()
    other = torch.randint(3, VOCAB, (13,), generator=g).tolist()
    ref = hf_logits(model_path, ids)
    model, _ = load_model(model_path, torch.float32, "cpu")

    assert_close(Paged(model).run([([], 0, ids)]), ref)  # one full prefill

    paged, pages = Paged(model), []  # prefill 30, then one decode step per token
    steps = [paged.run([(pages, 0, ids[:30])])]
    for i in range(30, 40):
        steps.append(paged.run([(pages, i, ids[i : i + 1])]))
    assert len(set(pages)) == 10 and pages != sorted(pages)
    assert_close(torch.cat(steps), ref)

    alone = Paged(model).run([([], 0, other)])
    batch = Paged(model).run([([], 0, ids), ([], 0, other)])  # two lengths in one flat batch
    assert_close(batch[:40], ref)
    assert_close(batch[40:], alone)

    # Mixed step: a 20-token chunk after a cached prefix next to another sequence's decode.
    mixed, pages_a, pages_b = Paged(model), [], []
    first = mixed.run([(pages_a, 0, ids[:20]), (pages_b, 0, other[:12])])
    second = mixed.run([(pages_a, 20, ids[20:]), (pages_b, 12, other[12:])])
    assert_close(torch.cat([first[:20], second[:20]]), ref)
    assert_close(torch.cat([first[20:], second[20:]]), alone)


def test_eos_ids_and_attributes(default_model_path: str, tiny_qwen3_path: str) -> None:
    model, config = load_model(default_model_path, torch.float32, "cpu")
    assert model.eos_token_ids == [2]
    assert (model.num_layers, model.num_heads, model.num_kv_heads, model.head_dim) == (30, 9, 3, 64)
    assert model.vocab_size == config.vocab_size == VOCAB
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    qwen3, _ = load_model(tiny_qwen3_path, torch.float32, "cpu")
    assert (qwen3.num_heads, qwen3.num_kv_heads, qwen3.head_dim) == (4, 2, 16)


def test_dummy_load_needs_no_weights(tmp_path, tiny_qwen3_path: str) -> None:
    shutil.copy(f"{tiny_qwen3_path}/config.json", tmp_path / "config.json")  # no safetensors
    model, config = load_model(str(tmp_path), torch.float32, "cpu", load_format="dummy")
    assert config.model_type == "qwen3"
    assert 0.015 < model.lm_head.weight.std() < 0.025
    assert 0.9 < model.norm.weight.mean() < 1.1
    logits = Paged(model).run([([], 0, [5, 6, 7])])
    assert logits.shape == (3, VOCAB) and torch.isfinite(logits).all()


def test_incomplete_or_mismatched_checkpoint_fails(tiny_llama_path: str) -> None:
    model, _ = load_model(tiny_llama_path, torch.float32, "cpu", load_format="dummy")
    weights = dict(iter_safetensors(tiny_llama_path))
    without_v = {k: v for k, v in weights.items() if k != "model.layers.1.self_attn.v_proj.weight"}
    with pytest.raises(ValueError, match="lacks 1 tensors.*qkv_proj"):
        model.load_weights(without_v.items())
    bad_shape = dict(weights, **{"model.norm.weight": torch.ones(65)})
    with pytest.raises(ValueError, match="shape"):
        model.load_weights(bad_shape.items())
    with pytest.raises(ValueError, match="no place"):
        model.load_weights([("model.layers.0.extra.weight", torch.ones(3))])


def test_unknown_architecture_and_missing_dir_fail_clearly(tmp_path) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        load_model(str(tmp_path), torch.float32, "cpu")
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture.*LlamaForCausalLM"):
        load_model(str(tmp_path), torch.float32, "cpu", load_format="dummy")


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
])
def test_rotary_matches_transformers(rope: dict) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=64, max_position_embeddings=1024, rope_parameters=rope)
    g = torch.Generator().manual_seed(2)
    positions = torch.randint(0, 1024, (24,), generator=g)
    q = torch.randn(24, 4, 64, generator=g)  # (num_tokens, num_heads, head_dim)
    k = torch.randn(24, 2, 64, generator=g)
    ours = RotaryEmbedding(64, 1024, rope_parameters(config))(positions, q, k)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions[None])
    # HF wants (batch, heads, tokens, head_dim).
    ref = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r[0].transpose(0, 1), rtol=1e-5, atol=1e-5)


def test_rope_parameters_from_legacy_configs() -> None:
    legacy = SimpleNamespace(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    assert rope_parameters(legacy) == {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}
    assert rope_parameters(SimpleNamespace(rope_theta=1e6)) == {
        "rope_type": "default", "rope_theta": 1e6}
    per_layer = SimpleNamespace(rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1e4},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e3}})
    assert rope_parameters(per_layer)["rope_theta"] == 1e4
    with pytest.raises(ValueError, match="yarn"):
        RotaryEmbedding(64, 16, {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})

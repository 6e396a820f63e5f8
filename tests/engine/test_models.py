"""Our model modules against HF transformers on the same weights, through the paged KV path."""

from __future__ import annotations

import random

import pytest
import torch

from engine.loader import load_model
from kernels.attention import AttentionBatch, KVCache, create_backend

PS = 4


def hf_logits(path, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


class Paged:
    """Drives a model through the paged cache with pages handed out in a shuffled order."""

    def __init__(self, model):
        self.model = model
        self.cache = KVCache(model.num_layers, 64, PS, model.num_kv_heads, model.head_dim,
                             torch.float32, "cpu")
        self.attn = create_backend("torch", self.cache, model.num_heads, model.head_dim**-0.5)
        self.free = list(range(1, 64))
        random.Random(0).shuffle(self.free)

    def run(self, seqs):
        """seqs: list of (pages, start, new_ids) -> logits of every new token, concatenated."""
        ids, pos, slots = [], [], []
        for pages, start, new in seqs:
            while len(pages) * PS < start + len(new):
                pages.append(self.free.pop())
            ids += new
            pos += range(start, start + len(new))
            slots += [pages[p // PS] * PS + p % PS for p in range(start, start + len(new))]
        self.attn.plan(AttentionBatch([len(n) for _, _, n in seqs],
                                      [s + len(n) for _, s, n in seqs],
                                      [p for p, _, _ in seqs], torch.tensor(slots)))
        with torch.inference_mode():
            hidden = self.model(torch.tensor(ids), torch.tensor(pos), self.attn)
            return self.model.compute_logits(hidden)


@pytest.fixture(params=["tiny_qwen3_path", "tiny_qwen2_path", "tiny_llama_path",
                        "default_model_path"])
def model_path(request):
    return request.getfixturevalue(request.param)


def test_logits_match_transformers_prefill_decode_and_batch(model_path):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 49152, (40,), generator=g).tolist()
    ref = hf_logits(model_path, ids)
    model, _ = load_model(model_path, torch.float32, "cpu")
    scale = ref.abs().max()

    full = Paged(model).run([([], 0, ids)])
    assert (full - ref).abs().max() / scale < 1e-4

    paged, pages = Paged(model), []
    steps = [paged.run([(pages, 0, ids[:30])])]
    for i in range(30, 40):
        steps.append(paged.run([(pages, i, ids[i : i + 1])]))
    assert (torch.cat(steps) - ref).abs().max() / scale < 1e-4

    other = torch.randint(3, 49152, (13,), generator=g).tolist()
    batch = Paged(model).run([([], 0, ids), ([], 0, other)])
    assert (batch[:40] - ref).abs().max() / scale < 1e-4
    alone = Paged(model).run([([], 0, other)])
    assert (batch[40:] - alone).abs().max() / alone.abs().max() < 1e-4


def test_dummy_load_needs_no_weights(tmp_path, tiny_qwen3_path):
    import shutil

    shutil.copy(f"{tiny_qwen3_path}/config.json", tmp_path / "config.json")
    model, config = load_model(str(tmp_path), torch.float32, "cpu", load_format="dummy")
    assert config.model_type == "qwen3" and model.lm_head.weight.std() > 0.01
    logits = Paged(model).run([([], 0, [5, 6, 7])])
    assert torch.isfinite(logits).all()


def test_unknown_architecture_and_missing_dir_fail_clearly(tmp_path, tiny_qwen3_path):
    import json

    with pytest.raises(ValueError, match="no config.json"):
        load_model(str(tmp_path), torch.float32, "cpu")
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture"):
        load_model(str(tmp_path), torch.float32, "cpu", load_format="dummy")

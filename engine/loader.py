"""Build a model from an HF-format directory: config via transformers, weights via safetensors.

``load_format="auto"`` streams every ``*.safetensors`` shard tensor by tensor into the model
(built directly on the target device); ``"dummy"`` reads only ``config.json`` and fills random
weights of a realistic scale, for speed work without a checkpoint.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from engine.default_model import eos_token_ids
from engine.models.registry import model_class

if TYPE_CHECKING:
    from engine.parallel import TensorParallel

logger = logging.getLogger(__name__)


def load_config(path: str) -> Any:
    """The ``transformers.PretrainedConfig`` of a model directory; ``ValueError`` if unreadable."""
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} is not a model directory (no config.json)")
    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, AttributeError, OSError) as exc:
        raise ValueError(f"cannot read the model config in {path!r}: {exc}") from exc


def iter_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) of every tensor in every shard, one at a time (bounded memory)."""
    from safetensors import safe_open

    index_file = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index_file):  # sharded: the index names the shards (ignore stray files)
        with open(index_file) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, shard) for shard in shards]
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ValueError(f"no *.safetensors files in {path!r}")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _init_dummy(model: nn.Module, seed: int, device: torch.device) -> None:
    """Random weights that keep activations in range (for speed work without checkpoints)."""
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=g, device=device, dtype=torch.float32)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.02 * noise)


def load_model(
    path: str,
    dtype: torch.dtype,
    device: torch.device | str,
    load_format: Literal["auto", "dummy"] = "auto",
    seed: int = 0,
    tp: TensorParallel | None = None,
) -> tuple[nn.Module, Any]:
    """Instantiate the right class for ``path``'s config and fill its weights.

    With ``tp``, only this rank's shard is ever allocated (``engine.parallel.shard``) and
    each checkpoint tensor is cut to it on the way in. Returns ``(model, config)``; the model
    is in eval mode without gradients.
    """
    if load_format not in ("auto", "dummy"):
        raise ValueError(f"unknown load_format {load_format!r} (choose 'auto' or 'dummy')")
    config = load_config(path)
    cls = model_class(config)
    device = torch.device(device)
    weights = iter_safetensors(path) if load_format == "auto" else None
    if tp is not None:
        from engine.parallel.shard import build_sharded, shard_tensors

        plan = tp.plan(config)
        model = build_sharded(cls, config, dtype, device, plan, tp.group)
        weights = shard_tensors(weights, plan) if weights is not None else None
    else:
        with device:  # build in place: an 8B model never takes a detour through host memory
            model = cls(config, dtype=dtype)
    if weights is None:
        _init_dummy(model, seed, device)
    else:
        model.load_weights(weights)
    model.requires_grad_(False).eval()
    # generation_config.json may add end-of-turn ids that config.json lacks.
    model.eos_token_ids = eos_token_ids(config, path)
    logger.info("loaded %s (%s, %s) from %s", cls.__name__, load_format, dtype, path)
    return model, config

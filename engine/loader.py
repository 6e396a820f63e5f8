"""Build a model from an HF-format directory: config via transformers, weights via safetensors."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from engine.models.registry import model_class

logger = logging.getLogger(__name__)


def load_config(path: str) -> Any:
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} is not a model directory (no config.json)")
    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, AttributeError, OSError) as exc:
        raise ValueError(f"cannot read the model config in {path!r}: {exc}") from exc


def iter_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

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


def load_model(path: str, dtype: torch.dtype, device: torch.device | str,
               load_format: str = "auto", seed: int = 0) -> tuple[nn.Module, Any]:
    """Instantiate the right class for ``path``'s config and fill its weights."""
    config = load_config(path)
    cls = model_class(config)
    device = torch.device(device)
    with device:  # build in place: an 8B model never takes a detour through host memory
        model = cls(config, dtype=dtype)
    if load_format == "dummy":
        _init_dummy(model, seed, device)
    elif load_format == "auto":
        model.load_weights(iter_safetensors(path))
    else:
        raise ValueError(f"unknown load_format {load_format!r}")
    logger.info("loaded %s (%s) from %s", cls.__name__, load_format, path)
    return model, config

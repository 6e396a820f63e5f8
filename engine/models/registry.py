"""Model classes by HF architecture name (or ``model_type``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from engine.models.llama import LlamaForCausalLM

_ARCHITECTURES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}
_MODEL_TYPES = {"llama": LlamaForCausalLM, "qwen2": LlamaForCausalLM, "qwen3": LlamaForCausalLM}


def model_class(config: Any) -> type[nn.Module]:
    for arch in getattr(config, "architectures", None) or []:
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    model_type = getattr(config, "model_type", None)
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise ValueError(
        f"unsupported architecture {getattr(config, 'architectures', None)} "
        f"(model_type {model_type!r}); supported: {sorted(_ARCHITECTURES)}"
    )

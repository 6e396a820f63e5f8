"""Speculative decoding: drafters (model-free and model-backed), the per-step policy, and
verification.

``engine.spec.verify`` is imported by the runner only; the model-backed drafters
(``draft_model``, ``self_spec``) import torch, which the engine process has anyway.
"""

from engine.spec import ngram, self_spec, suffix  # noqa: F401  (register the drafters)
from engine.spec.base import (
    DraftContext,
    Drafter,
    available_drafters,
    create_drafter,
    register_drafter,
)
from engine.spec.manager import SpecDecoder, SpecStats

__all__ = ["DraftContext", "Drafter", "SpecDecoder", "SpecStats", "available_drafters",
           "create_drafter", "register_drafter"]

"""Speculative decoding: drafters (model-free first), the per-step policy, and verification.

Import-light: ``engine.spec.verify`` (torch) is imported by the runner only.
"""

from engine.spec import ngram, suffix  # noqa: F401  (register the drafters)
from engine.spec.base import Drafter, available_drafters, create_drafter, register_drafter
from engine.spec.manager import SpecDecoder, SpecStats

__all__ = ["Drafter", "SpecDecoder", "SpecStats", "available_drafters", "create_drafter",
           "register_drafter"]

"""The drafter interface of speculative decoding, and the registry that picks one by name.

A drafter guesses the next tokens of a request from what it has seen (model-free drafters read
token ids only; a draft model would run a small network). The engine verifies the guesses in the
target model's next step, so a drafter can never change an output: a bad guess only wastes
compute. Drafters are pure Python and torch-free unless they wrap a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from engine.request import Request


class Drafter(ABC):
    """Proposes draft tokens for running requests; one instance per engine.

    Called from the engine loop thread only (no locking). A drafter may keep per-request state
    keyed by ``request.request_id``; it must drop that state in ``release``, which the engine
    calls exactly once when a request finishes or is aborted. ``propose`` must be cheap: it runs
    on the host for every decoding request every step (tens of microseconds, not milliseconds),
    so indexes are updated incrementally from the tokens appended since the last call.
    """

    def __init__(self, max_draft_len: int) -> None:
        assert max_draft_len >= 1, f"max_draft_len must be >= 1, got {max_draft_len}"
        self.max_draft_len = max_draft_len

    @abstractmethod
    def propose(self, request: Request, max_len: int) -> list[int]:
        """Up to ``min(max_len, self.max_draft_len)`` tokens that might follow the request's
        tokens (``prompt_ids + output_ids``), most likely first; [] when there is no good guess.
        """

    def observe(self, request: Request, num_drafted: int, num_accepted: int) -> None:
        """The last proposal of ``num_drafted`` tokens had its first ``num_accepted`` accepted.

        The accepted tokens are already in ``request.output_ids``. Default: nothing to learn.
        """
        return None

    def release(self, request: Request) -> None:
        """The request is done (finished or aborted): drop its state, keep what is reusable."""
        return None


_D = TypeVar("_D", bound=type[Drafter])
_REGISTRY: dict[str, type[Drafter]] = {}


def catch_up(tokens: list[int], request: Request) -> int:
    """Extend ``tokens`` (a drafter's copy of prompt + output) to the request's current tokens;
    returns how many it held before, so only the new ones get indexed."""
    done = len(tokens)
    if done == 0:
        tokens.extend(request.prompt_ids)
        tokens.extend(request.output_ids)
    else:
        tokens.extend(request.output_ids[done - len(request.prompt_ids) :])
    return done


def register_drafter(name: str) -> Callable[[_D], _D]:
    def decorate(cls: _D) -> _D:
        assert name not in _REGISTRY, f"drafter {name!r} registered twice"
        _REGISTRY[name] = cls
        return cls

    return decorate


def create_drafter(name: str, max_draft_len: int) -> Drafter:
    """The drafter registered as ``name``; ``ValueError`` for an unknown name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown speculative drafter {name!r}; known: {available_drafters()}")
    return _REGISTRY[name](max_draft_len)


def available_drafters() -> list[str]:
    return sorted(_REGISTRY)

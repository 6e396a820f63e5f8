"""The drafter interface of speculative decoding, and the registry that picks one by name.

A drafter guesses the next tokens of a request from what it has seen (model-free drafters read
token ids only; a draft model would run a small network). The engine verifies the guesses in the
target model's next step, so a drafter can never change an output: a bad guess only wastes
compute. Drafters are pure Python and torch-free unless they wrap a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from engine.request import Request


@dataclass(frozen=True)
class DraftContext:
    """What the engine lends drafters that run a network (``Drafter.uses_model``)."""

    model: Any  # the target model (engine.models), eval mode, on the runner's device and dtype
    num_draft_layers: int = 0  # self-speculation: target layers the draft runs; 0: half


class Drafter(ABC):
    """Proposes draft tokens for running requests; one instance per engine.

    Called from the engine loop thread only (no locking). A drafter may keep per-request state
    keyed by ``request.request_id``; it must drop that state in ``release``, which the engine
    calls exactly once when a request finishes or is aborted. ``propose`` must be cheap: it runs
    on the host for every decoding request every step (tens of microseconds, not milliseconds),
    so indexes are updated incrementally from the tokens appended since the last call.
    Drafters that run a network (``uses_model``, see ``engine.spec.draft_model``) cost more and
    say so; they are built with a ``DraftContext`` as second argument.
    """

    uses_model = False

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


def create_drafter(name: str, max_draft_len: int, context: DraftContext | None = None) -> Drafter:
    """The drafter registered as ``name``; ``ValueError`` for an unknown name, or for a drafter
    that runs a network when no ``context`` (target model) is given."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown speculative drafter {name!r}; known: {available_drafters()}")
    cls = _REGISTRY[name]
    if not cls.uses_model:
        return cls(max_draft_len)
    if context is None:
        raise ValueError(f"speculative drafter {name!r} runs a model: pass a DraftContext")
    return cls(max_draft_len, context)


def available_drafters() -> list[str]:
    return sorted(_REGISTRY)

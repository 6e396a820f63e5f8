"""Prompt lookup (n-gram) drafting: the baseline the suffix drafter must beat.

Find the most recent earlier occurrence of the request's last n tokens (n from ``MAX_N`` down to
``MIN_N``) in its own tokens and propose the tokens that followed it, always the full length.
An incremental index (n-gram -> position after its latest occurrence) keeps a proposal O(1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.spec.base import Drafter, catch_up, register_drafter

if TYPE_CHECKING:
    from engine.request import Request

MIN_N = 2
MAX_N = 5


class _RequestIndex:
    __slots__ = ("latest", "tokens")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.latest: dict[tuple[int, ...], int] = {}  # n-gram -> position right after it


@register_drafter("ngram")
class NgramDrafter(Drafter):
    def __init__(self, max_draft_len: int) -> None:
        super().__init__(max_draft_len)
        self._requests: dict[str, _RequestIndex] = {}

    def propose(self, request: Request, max_len: int) -> list[int]:
        state = self._requests.get(request.request_id)
        if state is None:
            state = self._requests[request.request_id] = _RequestIndex()
        done = catch_up(state.tokens, request)
        tokens, latest = state.tokens, state.latest
        # Index the n-grams followed by a known token: those ending before the last position,
        # so the current suffix never matches itself.
        for j in range(max(done, MIN_N), len(tokens)):
            for n in range(MIN_N, min(MAX_N, j) + 1):
                latest[tuple(tokens[j - n : j])] = j
        max_len = min(max_len, self.max_draft_len)
        for n in range(min(MAX_N, len(tokens)), MIN_N - 1, -1):
            j = latest.get(tuple(tokens[-n:]))
            if j is not None:
                return tokens[j : j + max_len]
        return []

    def release(self, request: Request) -> None:
        self._requests.pop(request.request_id, None)

"""Suffix drafting: continue the longest recent suffix the way the text continued before.

Agents repeat themselves: a file read by a tool is echoed back edited, JSON from a tool output is
quoted in the answer, a listing is copied into a command. The drafter keeps, per request, counts
of "context of m tokens -> next token" for every m in ``MIN_MATCH .. MAX_MATCH`` over the
request's own tokens (prompt with its tool outputs, then the output so far), plus one bounded
global table of the same counts over the outputs of recently finished requests. To draft, it
takes the longest suffix of the tokens that either table has seen, proposes the most frequent
continuation, appends it to the context and repeats.

Draft length adapts to confidence: each drafted token gets ``p = count / (total + 1 / m)`` — the
share of its continuation among all seen after that context, discounted more for short matches
(one sighting after a 2-token context is weak evidence, after 8 tokens strong) — and drafting
stops once the product of the ``p`` falls below ``MIN_CONFIDENCE`` or the cap is reached.

Cost: indexing is incremental, ``MAX_MATCH - MIN_MATCH + 1`` dict updates per new token (the
prompt once, at the first proposal); a proposal is at most that many lookups per drafted token.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from engine.spec.base import Drafter, catch_up, register_drafter

if TYPE_CHECKING:
    from engine.request import Request

MIN_MATCH = 2  # shortest context (tokens) that may predict
MAX_MATCH = 8  # longest context indexed; longer matches are treated as this long
MIN_CONFIDENCE = 0.3  # stop drafting when the product of per-token confidences drops below
GLOBAL_MAX_TOKENS = 1 << 16  # output tokens of finished requests kept in the global table

Counts = dict[tuple[int, ...], dict[int, int]]  # context (m tokens) -> {next token: count}


def index_transitions(counts: Counts, tokens: list[int], first: int, last: int, sign: int) -> None:
    """Add (``sign`` 1) or remove (-1) the transitions into positions ``first .. last - 1``."""
    for j in range(max(first, MIN_MATCH), last):
        nxt = tokens[j]
        for m in range(MIN_MATCH, min(MAX_MATCH, j) + 1):
            key = tuple(tokens[j - m : j])
            followers = counts.get(key)
            if followers is None:
                followers = counts[key] = {}
            n = followers.get(nxt, 0) + sign
            if n > 0:
                followers[nxt] = n
            else:
                del followers[nxt]
                if not followers:
                    del counts[key]


class _RequestIndex:
    __slots__ = ("counts", "tokens")

    def __init__(self) -> None:
        self.tokens: list[int] = []  # prompt_ids + output_ids seen so far
        self.counts: Counts = {}


class GlobalIndex:
    """Transition counts over the last ``max_tokens`` output tokens of finished requests."""

    def __init__(self, max_tokens: int = GLOBAL_MAX_TOKENS) -> None:
        self.max_tokens = max_tokens
        self.counts: Counts = {}
        self._segments: deque[tuple[list[int], int]] = deque()  # (tokens, first indexed position)
        self.num_tokens = 0

    def add(self, context: list[int], output: list[int]) -> None:
        """Index ``output``, with the tokens before it (``context``) as lead-in for its first
        transitions; the oldest segments go when the bound is passed."""
        if not output:
            return
        lead = context[-MAX_MATCH:]
        tokens = lead + output
        index_transitions(self.counts, tokens, len(lead), len(tokens), 1)
        self._segments.append((tokens, len(lead)))
        self.num_tokens += len(output)
        while self.num_tokens > self.max_tokens:
            old, first = self._segments.popleft()
            index_transitions(self.counts, old, first, len(old), -1)
            self.num_tokens -= len(old) - first


@register_drafter("suffix")
class SuffixDrafter(Drafter):
    def __init__(self, max_draft_len: int, global_max_tokens: int = GLOBAL_MAX_TOKENS) -> None:
        super().__init__(max_draft_len)
        self.global_index = GlobalIndex(global_max_tokens)
        self._requests: dict[str, _RequestIndex] = {}

    def _sync(self, request: Request) -> _RequestIndex:
        """Bring the request's index up to its current tokens (only the new ones are indexed)."""
        state = self._requests.get(request.request_id)
        if state is None:
            state = self._requests[request.request_id] = _RequestIndex()
        done = catch_up(state.tokens, request)
        index_transitions(state.counts, state.tokens, done, len(state.tokens), 1)
        return state

    def propose(self, request: Request, max_len: int) -> list[int]:
        state = self._sync(request)
        max_len = min(max_len, self.max_draft_len)
        context = state.tokens[-MAX_MATCH:]
        local, shared = state.counts, self.global_index.counts
        draft: list[int] = []
        confidence = 1.0
        while len(draft) < max_len:
            best, p = self._next(context, local, shared)
            confidence *= p
            if best < 0 or confidence < MIN_CONFIDENCE:
                break
            draft.append(best)
            context.append(best)
            if len(context) > MAX_MATCH:
                del context[0]
        return draft

    @staticmethod
    def _next(context: list[int], local: Counts, shared: Counts) -> tuple[int, float]:
        """Most frequent continuation of the longest known suffix of ``context``, and its
        confidence; (-1, 0.0) when no suffix of at least ``MIN_MATCH`` tokens is known."""
        for m in range(min(MAX_MATCH, len(context)), MIN_MATCH - 1, -1):
            key = tuple(context[-m:])
            mine, theirs = local.get(key), shared.get(key)
            if mine is None and theirs is None:
                continue
            if theirs is None:
                followers = mine
            elif mine is None:
                followers = theirs
            else:
                followers = dict(theirs)
                for token, n in mine.items():
                    followers[token] = followers.get(token, 0) + n
            best = max(followers, key=followers.__getitem__)
            return best, followers[best] / (sum(followers.values()) + 1.0 / m)
        return -1, 0.0

    def release(self, request: Request) -> None:
        state = self._requests.pop(request.request_id, None)
        if state is not None or request.output_ids:
            self.global_index.add(request.prompt_ids, request.output_ids)

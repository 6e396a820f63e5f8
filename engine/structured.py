"""Structured output: compile a request's grammar, track its place in it, mask logits to match.

A request carries a ``GrammarSpec`` (plain text, it crosses IPC inside ``SamplingParams``); the
engine compiles it with one ``GrammarCompiler`` per engine, whose xgrammar cache makes a
repeated schema free. ``EngineCore.add_request`` compiles first, so a broken schema is refused
there and never reaches a step; the runner compiles again (a cache hit) when the request first
samples and keeps a ``GrammarState`` on the request. Every step it fills one bitmask row per
constrained request, applies it to those logit rows only, samples, and ``accept``s the token.

Importing this module imports xgrammar (about a second); ``GrammarSpec`` itself lives in the
import-light ``engine.sampling_params`` and is re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import xgrammar as xgr

from engine.errors import InvalidRequestError
from engine.sampling_params import GrammarKind, GrammarSpec

if TYPE_CHECKING:
    from engine.request import Request

__all__ = [
    "DEFAULT_MAX_WHITESPACE",
    "GrammarCompiler",
    "GrammarKind",
    "GrammarSpec",
    "GrammarState",
    "allocate_bitmask",
    "apply_bitmask",
    "build_tokenizer_info",
    "mask_logits",
]

# Bounds each run of whitespace between JSON tokens. Unbounded runs let a model loop on newlines
# forever, and whitespace-heavy grammar states are the slowest to mask; 32 still admits
# pretty-printed JSON nested seven levels at indent 4. Structural tags carry their own bound
# (``tools.constrained`` writes this one into them).
DEFAULT_MAX_WHITESPACE = 32

_ANY_OBJECT_SCHEMA = '{"type": "object"}'
# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: " and often
# "Check failed: (cond) is false: "; the rest is the useful part.
_MAX_ERROR_LEN = 300
_XGRAMMAR_NOISE = re.compile(r"\[[\d:]+\] \S+:\d+: |Check failed: \(.*?\) is false: ")


def build_tokenizer_info(
    tokenizer: Any, vocab_size: int, *, stop_token_ids: Sequence[int] | None = None
) -> xgr.TokenizerInfo:
    """``xgrammar.TokenizerInfo`` for a Hugging Face tokenizer and the model's vocab size.

    ``vocab_size`` is the width of the model's logits (it may exceed the tokenizer's vocabulary;
    the extra ids are never allowed). Special tokens — those a detokenizer skips, such as
    ``<|im_start|>`` — are blanked so no grammar lets them stand for their text inside a JSON
    string; the stop tokens are still accepted at the end, by id.
    """
    stop_ids = list(stop_token_ids) if stop_token_ids else None
    detected = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids
    )
    encoded_vocab = [""] * vocab_size
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < vocab_size:
            encoded_vocab[token_id] = token
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if added.special and token_id < vocab_size:
            encoded_vocab[token_id] = ""
    return xgr.TokenizerInfo.from_vocab_and_metadata(encoded_vocab, detected.dump_metadata())


class GrammarCompiler:
    """Compiles ``GrammarSpec``s for one tokenizer; one per engine, thread-safe.

    xgrammar's cache (keyed by the source text and options, bounded by ``cache_limit_bytes``)
    makes compiling a spec seen before a lookup of microseconds; a new schema costs milliseconds,
    a large one up to seconds. ``max_whitespace`` bounds whitespace runs in ``json_schema`` and
    ``json_object`` grammars (None: unbounded); see ``DEFAULT_MAX_WHITESPACE``.
    """

    def __init__(
        self,
        tokenizer_info: xgr.TokenizerInfo,
        *,
        max_whitespace: int | None = DEFAULT_MAX_WHITESPACE,
        max_threads: int = 2,
        cache_limit_bytes: int = 256 << 20,
    ) -> None:
        if max_whitespace is not None and max_whitespace < 1:
            raise ValueError(f"max_whitespace must be positive or None, got {max_whitespace}")
        self.tokenizer_info = tokenizer_info
        self.max_whitespace = max_whitespace
        self._compiler = xgr.GrammarCompiler(
            tokenizer_info, max_threads=max_threads, cache_limit_bytes=cache_limit_bytes
        )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer_info.vocab_size

    def compile(self, spec: GrammarSpec, *, param: str | None = None) -> xgr.CompiledGrammar:
        """The compiled grammar of ``spec``; ``InvalidRequestError`` if xgrammar refuses it.

        ``param`` names the request field blamed for a bad grammar; by default
        ``"response_format"`` for the JSON kinds and ``"tools"`` for structural tags.
        """
        if param is None:
            param = "tools" if spec.kind == "structural_tag" else "response_format"
        try:
            if spec.kind == "json_schema":
                return self._json(spec.source, strict_mode=True)
            if spec.kind == "json_object":
                return self._json(_ANY_OBJECT_SCHEMA, strict_mode=False)
            if spec.kind == "structural_tag":
                return self._compiler.compile_structural_tag(spec.source)
        except (RuntimeError, ValueError, TypeError) as exc:
            # xgrammar reports bad schemas and tags as RuntimeError subclasses.
            raise InvalidRequestError(f"invalid grammar: {_clean(exc)}", param=param) from exc
        raise InvalidRequestError(f"unknown grammar kind {spec.kind!r}", param=param)

    def _json(self, schema: str, *, strict_mode: bool) -> xgr.CompiledGrammar:
        return self._compiler.compile_json_schema(
            schema,
            any_whitespace=True,
            max_whitespace_cnt=self.max_whitespace,
            strict_mode=strict_mode,
        )


def _clean(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else repr(exc)
    for line in lines:  # the first line that names the failure, without C++ file positions
        if _XGRAMMAR_NOISE.match(line):
            text = line
            break
    text = _XGRAMMAR_NOISE.sub("", text).strip()
    text = text.split(" The JSON string is:")[0]  # xgrammar echoes the whole schema after this
    return text if len(text) <= _MAX_ERROR_LEN else text[: _MAX_ERROR_LEN - 3] + "..."


class GrammarState:
    """One request's position in its grammar (an ``xgrammar.GrammarMatcher``).

    Owned by the thread that samples for the request; not thread-safe. ``stop_token_ids``
    replaces the tokenizer info's stop tokens (the runner passes the request's own stop ids, so
    the grammar terminates exactly when the request stops). After the grammar is complete only
    the stop tokens are allowed, and accepting one terminates the state.
    """

    def __init__(
        self, grammar: xgr.CompiledGrammar, *, stop_token_ids: Sequence[int] | None = None
    ) -> None:
        self._matcher = xgr.GrammarMatcher(
            grammar, override_stop_tokens=list(stop_token_ids) if stop_token_ids else None
        )
        self.num_accepted = 0  # tokens accepted and not rolled back

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> bool:
        """Write the allowed next tokens into ``bitmask[row]``; False if all are allowed.

        ``bitmask``: (batch, ceil(vocab_size / 32)) int32 on CPU, from ``allocate_bitmask``.
        """
        assert not self._matcher.is_terminated(), "no next token after termination"
        return self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False (state unchanged) if the grammar forbids it."""
        accepted = self._matcher.accept_token(token_id)
        if accepted:
            self.num_accepted += 1
        return accepted

    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens (rejected speculative drafts)."""
        assert 0 <= num_tokens <= self.num_accepted, "cannot roll back past the start"
        self._matcher.rollback(num_tokens)
        self.num_accepted -= num_tokens

    def is_terminated(self) -> bool:
        """A stop token was accepted after a complete match."""
        return self._matcher.is_terminated()

    def is_completed(self) -> bool:
        """The text so far is a complete match (a stop token would be accepted now)."""
        return self._matcher.is_completed()


def allocate_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
    """(batch_size, ceil(vocab_size / 32)) int32 on CPU, all tokens allowed."""
    return xgr.allocate_token_bitmask(batch_size, vocab_size)


def apply_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, *, rows: Sequence[int] | None = None
) -> None:
    """Set disallowed logits to -inf in place.

    ``logits``: (batch, vocab_size) float on any device. ``bitmask``: (batch, ceil(vocab_size /
    32)) int32, on CPU or ``logits.device``; bit ``j % 32`` of ``bitmask[i, j // 32]`` allows token
    ``j``. ``rows``: the rows to mask (the constrained requests); None masks every row.
    """
    if bitmask.device != logits.device:
        # From pageable memory a non-blocking copy stages the bytes before it returns, so the
        # caller may reuse ``bitmask`` at once.
        bitmask = bitmask.to(logits.device, non_blocking=True)
    xgr.apply_token_bitmask_inplace(
        logits, bitmask, indices=list(rows) if rows is not None else None
    )


def mask_logits(
    logits: torch.Tensor, samplers: Sequence[Request], constrained: list[int], vocab_size: int,
    compile_grammar: Callable[[GrammarSpec], xgr.CompiledGrammar],
    drafts: list[list[int]] | None = None,
) -> None:
    """Mask the logit rows of the ``constrained`` samplers (indices into ``samplers``, the
    requests that sample, in batch order) to their grammars; a request's ``GrammarState`` is
    made at its first sample from ``compile_grammar``.

    ``logits``: (num_samplers, vocab), or with ``drafts`` (sum(1 + len(d)), vocab) with each
    request's rows together. Row ``j`` of a request is the distribution after ``d_1 .. d_j``:
    its mask comes from the matcher advanced through those drafts, then rolled back. After a
    draft the grammar refuses, later rows stay unmasked: row ``j`` forbids ``d_{j+1}``, so
    verification rejects there at the latest and never emits a later row's token. Rows after
    an accepted stop token stay unmasked too (the scheduler drops their tokens).
    """
    drafts = drafts or [[] for _ in samplers]
    first_rows = [0]
    for draft in drafts:
        first_rows.append(first_rows[-1] + 1 + len(draft))
    bitmask = allocate_bitmask(logits.shape[0], vocab_size)  # (rows, vocab / 32)
    masked = []
    for i in constrained:
        request = samplers[i]
        state = request.grammar_state
        if state is None:
            # The grammar's stop tokens are the request's, so it terminates when they stop.
            grammar = compile_grammar(request.params.grammar)
            state = GrammarState(grammar, stop_token_ids=sorted(request.stop_ids))
            request.grammar_state = state
        assert state.num_accepted == len(request.output_ids), (
            f"{request.request_id}: grammar saw {state.num_accepted} tokens, "
            f"output has {len(request.output_ids)}"
        )
        num_advanced = 0
        for j in range(len(drafts[i]) + 1):
            if j > 0 and state.is_terminated():  # a stop token among the drafts
                break
            if state.fill_bitmask(bitmask, first_rows[i] + j):
                masked.append(first_rows[i] + j)
            if j == len(drafts[i]) or not state.accept(drafts[i][j]):
                break
            num_advanced += 1
        state.rollback(num_advanced)
    if masked:
        apply_bitmask(logits, bitmask, rows=masked)

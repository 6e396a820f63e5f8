"""Verify drafted tokens against the target model's logits, one forward for all of them.

A request with drafts ``d_1 .. d_D`` ran positions ``start .. start + D`` (its last known token,
then the drafts), so logit row ``i`` is the target's distribution ``p_i`` for the token after
``d_i`` (row 0: after the known token). Row ``i`` is sampled exactly as a plain step would sample
it — same penalties (counting ``d_1 .. d_i`` as output), filters and temperature — giving
``t_i``. The emitted tokens are ``t_0 .. t_a`` where ``a`` is the first ``i`` with
``t_i != d_{i+1}`` (or ``D``): the accepted drafts plus one token the target chose itself.

Greedy: ``t_i = argmax p_i``, so this is the longest prefix with ``d_{i+1} == argmax p_i`` plus
the bonus token, and the output equals plain greedy decoding token for token.

Sampling: this *is* speculative sampling for a point-mass draft. Drawing ``t_i ~ p_i`` and
accepting ``d_{i+1}`` iff ``t_i == d_{i+1}`` accepts with probability ``p_i(d_{i+1})`` (=
``min(1, p/q)`` with ``q`` the point mass), and on rejection ``t_i`` is distributed as ``p_i``
conditioned on ``t_i != d_{i+1}``, i.e. ``p_i`` renormalised without the draft — the residual
``max(0, p - q)`` of the standard rule. Every emitted token is therefore distributed exactly as
in plain sampling. Seeded requests stay reproducible for a fixed configuration, but draw their
noise for every verified row, so their streams differ from runs without speculation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.sampler import SampledToken, Sampler, SampleRow, has_penalty


def expand_rows(rows: Sequence[SampleRow], drafts: Sequence[list[int]]) -> list[SampleRow]:
    """One ``SampleRow`` per logit row: row ``i`` of a request sees ``d_1 .. d_i`` as output."""
    expanded = []
    for row, draft in zip(rows, drafts):
        expanded.append(row)
        penalised = has_penalty(row.params)
        for i in range(1, len(draft) + 1):
            output_ids = row.output_ids + draft[:i] if penalised else row.output_ids
            expanded.append(SampleRow(row.params, row.prompt_ids, output_ids, row.generator))
    return expanded


def accept(tokens: Sequence[SampledToken], draft: list[int]) -> list[SampledToken]:
    """The emitted prefix of one request's ``1 + len(draft)`` row tokens (see module doc)."""
    assert len(tokens) == len(draft) + 1, f"{len(tokens)} rows for {len(draft)} drafts"
    for i, token in enumerate(tokens[:-1]):
        if token.token_id != draft[i]:
            return list(tokens[: i + 1])
    return list(tokens)


def verify(
    sampler: Sampler,
    logits: torch.Tensor,
    rows: Sequence[SampleRow],
    drafts: Sequence[list[int]],
) -> list[list[SampledToken]]:
    """Sample every row, then keep each request's accepted prefix plus its bonus token.

    ``logits``: (sum(1 + len(d) for d in drafts), vocab) float32, each request's rows together
    and in position order; ``rows``/``drafts``: one per request (an empty draft is a plain step).
    """
    expanded = expand_rows(rows, drafts)
    assert logits.shape[0] == len(expanded), f"{logits.shape[0]} logit rows, {len(expanded)} rows"
    tokens = sampler(logits, expanded)
    results, offset = [], 0
    for draft in drafts:
        n = len(draft) + 1
        results.append(accept(tokens[offset : offset + n], draft))
        offset += n
    return results

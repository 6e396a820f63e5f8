"""Turns one step's logits into one token per request: penalties, filters, seeded draws, logprobs.

Order per row (fixed, so a request's output does not depend on how it was batched):
repetition penalty -> frequency/presence penalties -> logit bias -> greedy argmax, or
temperature -> top-k -> top-p -> min-p -> draw. Reported log-probabilities come from the *raw*
model logits (before any penalty, bias or temperature), which is vLLM's default
("raw_logprobs"): they describe the model, not the sampling settings, so two requests with
different settings see the same numbers for the same text.

Nothing here reads a tensor back to the host except the single ``.tolist()`` at the end; per-row
settings go to the device in one asynchronous copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class SampleRow:
    """One request that needs a token this step. The runner builds it; the sampler only reads it."""

    params: SamplingParams
    prompt_ids: list[int]  # (prompt_len,) the request's prompt token ids
    output_ids: list[int]  # (num_output_tokens,) tokens generated so far; penalties count these
    generator: torch.Generator | None  # from make_generator(); None draws from the device's RNG


@dataclass(frozen=True)
class SampledToken:
    """The sampler's answer for one row."""

    token_id: int
    logprob: float | None  # raw log-prob of token_id; None when params.logprobs is None
    # (params.logprobs,) pairs (token_id, raw log-prob), highest first; None when not asked for
    top_logprobs: list[tuple[int, float]] | None


def make_generator(params: SamplingParams, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded from ``params.seed`` on ``device``, or None for an unseeded request.

    The runner creates it once per request and passes it in every step, so a seeded request draws
    the same stream whatever else shares its batches.
    """
    if params.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed)
    return generator


def has_logit_bias(params: SamplingParams) -> bool:
    return bool(params.logit_bias)


def has_penalty(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    )


# Columns of the per-row settings tensor built by _settings_to_device.
_TEMPERATURE, _TOP_K, _TOP_P, _MIN_P, _REPETITION, _FREQUENCY, _PRESENCE = range(7)


class Sampler:
    """Stateless; one instance serves every step. See the module docstring for the order."""

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> list[SampledToken]:
        """Pick one token for each row of ``logits`` (num_rows, vocab) float32; never mutates it."""
        num_rows, vocab_size = logits.shape
        assert len(rows) == num_rows, f"{len(rows)} rows for {num_rows} logit rows"
        assert logits.dtype == torch.float32, f"logits must be float32, got {logits.dtype}"
        params = [row.params for row in rows]
        any_logprobs = any(p.logprobs is not None for p in params)
        any_penalty = any(has_penalty(p) for p in params)
        any_bias = any(has_logit_bias(p) for p in params)
        sample_idx = [i for i, p in enumerate(params) if not p.greedy]

        if not sample_idx and not any_penalty and not any_bias and not any_logprobs:
            # The common decode batch: one kernel and one copy back, no per-row work at all.
            return [SampledToken(t, None, None) for t in logits.argmax(dim=-1).tolist()]

        settings = _settings_to_device(params, vocab_size, logits.device)  # (num_rows, 7)
        adjusted = apply_penalties(logits, rows, settings) if any_penalty else logits
        if any_bias:
            adjusted = apply_logit_bias(adjusted, rows)
        return _package(logits, _choose(adjusted, settings, rows, sample_idx), params)

    def sample_on_device(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
        """(num_rows,) int64 token ids, left on the device: no host synchronisation at all.

        For rows without penalties, logit bias or logprobs (``needs_host``), the overlap
        scheduler's path; the tokens are the ones ``__call__`` would pick.
        """
        assert not any(needs_host(row.params) for row in rows), "penalties/bias/logprobs: __call__"
        assert logits.dtype == torch.float32, f"logits must be float32, got {logits.dtype}"
        sample_idx = [i for i, row in enumerate(rows) if not row.params.greedy]
        if not sample_idx:
            return logits.argmax(dim=-1)
        settings = _settings_to_device([row.params for row in rows], logits.shape[1],
                                       logits.device)
        return _choose(logits, settings, rows, sample_idx)


def needs_host(params: SamplingParams) -> bool:
    """Sampling this row reads host state (token counts, logit bias) or returns logprobs."""
    return has_penalty(params) or has_logit_bias(params) or params.logprobs is not None


def _choose(
    logits: torch.Tensor, settings: torch.Tensor, rows: Sequence[SampleRow],
    sample_idx: list[int],
) -> torch.Tensor:
    """(num_rows,) token ids: argmax for greedy rows, a draw (``_sample``) for ``sample_idx``."""
    if len(sample_idx) == len(rows):
        return _sample(logits, settings, rows)
    token_ids = logits.argmax(dim=-1)  # (num_rows,)
    if sample_idx:
        idx = _to_device(sample_idx, torch.long, logits.device)
        sampled = _sample(logits.index_select(0, idx), settings.index_select(0, idx),
                          [rows[i] for i in sample_idx])
        token_ids = token_ids.index_copy(0, idx, sampled)
    return token_ids


def apply_penalties(
    logits: torch.Tensor, rows: Sequence[SampleRow], settings: torch.Tensor | None = None
) -> torch.Tensor:
    """Repetition (HF) then frequency/presence (OpenAI) penalties; returns a new (num_rows, vocab).

    Repetition divides positive logits and multiplies negative ones of every token seen in prompt
    or output; frequency and presence subtract ``freq * count + presence * (count > 0)`` over the
    output only. Rows without penalties pass through bit-exactly (x / 1, x * 1 and x - 0 are exact).
    """
    num_rows, vocab_size = logits.shape
    device = logits.device
    if settings is None:
        settings = _settings_to_device([r.params for r in rows], vocab_size, device)

    # Flat indices row * vocab + token: output occurrences first, then prompt tokens of rows with
    # a repetition penalty, built on the host and sent in one copy.
    output_parts: list[torch.Tensor] = []
    prompt_parts: list[torch.Tensor] = []
    for i, row in enumerate(rows):
        if not has_penalty(row.params):
            continue
        offset = i * vocab_size
        output_parts.append(torch.as_tensor(row.output_ids, dtype=torch.long) + offset)
        if row.params.repetition_penalty != 1.0:
            prompt_parts.append(torch.as_tensor(row.prompt_ids, dtype=torch.long) + offset)
    num_output = sum(len(part) for part in output_parts)
    flat_idx = _host_to_device(
        torch.cat([torch.empty(0, dtype=torch.long), *output_parts, *prompt_parts]), device
    )
    output_idx, prompt_idx = flat_idx[:num_output], flat_idx[num_output:]

    counts = torch.zeros(num_rows * vocab_size, dtype=logits.dtype, device=device)
    counts.index_add_(0, output_idx, torch.ones(num_output, dtype=logits.dtype, device=device))
    counts = counts.view(num_rows, vocab_size)  # (num_rows, vocab) occurrences in the output
    in_output = counts > 0  # (num_rows, vocab)
    seen = in_output.clone()  # (num_rows, vocab) in prompt or output
    seen.view(-1).index_fill_(0, prompt_idx, True)

    repetition = settings[:, _REPETITION : _REPETITION + 1]  # (num_rows, 1)
    penalized = torch.where(logits > 0, logits / repetition, logits * repetition)
    adjusted = torch.where(seen, penalized, logits)
    frequency = settings[:, _FREQUENCY : _FREQUENCY + 1]  # (num_rows, 1)
    presence = settings[:, _PRESENCE : _PRESENCE + 1]  # (num_rows, 1)
    return adjusted - frequency * counts - presence * in_output.to(logits.dtype)


def apply_logit_bias(logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
    """Each row's ``logit_bias`` added to its logits; returns a new (num_rows, vocab). The
    (row, token) indices and the biases go to the device in one copy."""
    vocab_size = logits.shape[1]
    flat: list[int] = []
    biases: list[float] = []
    for i, row in enumerate(rows):
        for token_id, bias in (row.params.logit_bias or {}).items():
            flat.append(i * vocab_size + token_id)
            biases.append(bias)
    packed = _host_to_device(torch.tensor([flat, biases], dtype=torch.float64), logits.device)
    out = logits.clone()
    out.view(-1).index_add_(0, packed[0].long(), packed[1].to(logits.dtype))
    return out


def _sample(
    logits: torch.Tensor, settings: torch.Tensor, rows: Sequence[SampleRow]
) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, then one draw per row; returns (num_rows,) long."""
    vocab_size = logits.shape[1]
    params = [row.params for row in rows]
    neg_inf = float("-inf")

    # Shifting by the row max first keeps tiny temperatures finite: every value is <= 0, so the
    # division gives at worst -inf, never +inf or NaN, and the best token stays at 0.
    temperature = settings[:, _TEMPERATURE : _TEMPERATURE + 1]  # (num_rows, 1)
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # (num_rows, vocab)

    if any(0 < p.top_k < vocab_size or p.top_p < 1.0 for p in params):
        # A stable descending sort breaks ties toward the lower token id, so top-k is deterministic.
        sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True, stable=True)
        ranks = torch.arange(vocab_size, device=logits.device)  # (vocab,)
        top_k = settings[:, _TOP_K : _TOP_K + 1]  # (num_rows, 1), vocab when disabled
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k, neg_inf)
        # top-p sees the distribution renormalised over the top-k survivors. A token stays when
        # the mass strictly before it is < top_p: the smallest prefix reaching top_p, and the
        # first token always (mass 0 before it, top_p > 0). Rows at top_p == 1 skip the test so
        # cumsum rounding above 1.0 can never drop their tail.
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        top_p = settings[:, _TOP_P : _TOP_P + 1]  # (num_rows, 1)
        sorted_logits = sorted_logits.masked_fill((mass_before >= top_p) & (top_p < 1.0), neg_inf)
        scaled = torch.empty_like(scaled).scatter_(1, sorted_ids, sorted_logits)

    if any(p.min_p > 0.0 for p in params):
        # Renormalising after top-k/top-p scales every prob alike, so prob / max_prob is the same
        # whichever order min-p runs in; the best token always survives.
        probs = scaled.softmax(dim=-1)
        min_p = settings[:, _MIN_P : _MIN_P + 1]  # (num_rows, 1)
        scaled = scaled.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), neg_inf)

    probs = scaled.softmax(dim=-1)  # (num_rows, vocab), exactly 0 for filtered tokens
    # Exponential race: argmax(p_i / E_i) with E_i ~ Exp(1) picks i with probability p_i. Seeded
    # rows draw their E from their own generator, so the pick depends only on the row's logits and
    # its seed, never on neighbours in the batch.
    noise = torch.empty_like(probs)  # (num_rows, vocab)
    if any(row.generator is None for row in rows):
        noise.exponential_()
    for i, row in enumerate(rows):
        if row.generator is not None:
            noise[i].exponential_(generator=row.generator)
    # A zero draw would make 0 / 0 = NaN for filtered tokens, and argmax favours NaN.
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)
    return (probs / noise).argmax(dim=-1)


def _package(
    raw_logits: torch.Tensor, token_ids: torch.Tensor, params: Sequence[SamplingParams]
) -> list[SampledToken]:
    """Attach raw logprobs where asked and bring everything back in one copy."""
    num_rows, vocab_size = raw_logits.shape
    lp_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not lp_rows:
        return [SampledToken(t, None, None) for t in token_ids.tolist()]
    num_top = min(max(params[i].logprobs or 0 for i in lp_rows), vocab_size)
    if len(lp_rows) < num_rows:
        # log_softmax and topk read the whole vocabulary: spend them only on rows that asked.
        idx = _to_device(lp_rows, torch.long, raw_logits.device)
        raw_logits, lp_token_ids = raw_logits.index_select(0, idx), token_ids.index_select(0, idx)
    else:
        lp_token_ids = token_ids
    logprobs = raw_logits.log_softmax(dim=-1)  # (num_lp_rows, vocab)
    chosen = logprobs.gather(1, lp_token_ids[:, None])  # (num_lp_rows, 1)
    top_values, top_ids = logprobs.topk(num_top, dim=-1)  # (num_lp_rows, num_top), highest first
    # float64 holds token ids exactly (< 2**53) and float32 logprobs exactly, so every number
    # shares one flat tensor and one device-to-host copy.
    table = torch.cat([chosen, top_ids.to(logprobs.dtype), top_values], dim=1).double()
    flat = torch.cat([token_ids.double(), table.flatten()]).tolist()
    width = 1 + 2 * num_top  # (chosen, top ids..., top values...) per logprob row

    results = [SampledToken(int(t), None, None) for t in flat[:num_rows]]
    for j, i in enumerate(lp_rows):
        n = params[i].logprobs or 0
        values = flat[num_rows + j * width : num_rows + (j + 1) * width]
        top = [
            (int(t), lp) for t, lp in zip(values[1 : 1 + n], values[1 + num_top : 1 + num_top + n])
        ]
        results[i] = SampledToken(results[i].token_id, values[0], top)
    return results


def _settings_to_device(
    params: Sequence[SamplingParams], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """(num_rows, 7) float32 per-row settings, columns named by the _TEMPERATURE... constants.

    Greedy rows get temperature 1 (their value is never used; this avoids dividing by 0) and a
    disabled top-k becomes vocab_size; float32 holds any realistic vocab size exactly (< 2**24).
    """
    table = [
        [
            p.temperature if not p.greedy else 1.0,
            p.top_k if p.top_k > 0 else vocab_size,
            p.top_p,
            p.min_p,
            p.repetition_penalty,
            p.frequency_penalty,
            p.presence_penalty,
        ]
        for p in params
    ]
    return _to_device(table, torch.float32, device)


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _host_to_device(torch.tensor(values, dtype=dtype), device)


def _host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    # From pageable memory an asynchronous host-to-device copy stages the bytes before it returns
    # and waits for no kernel, so it is safe and never stalls on the running step. Pinning each
    # small tensor anew cost more host time than it saved (measured on H200).
    return tensor.to(device, non_blocking=True)

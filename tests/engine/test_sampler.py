"""Sampler tests: exact checks against hand-written references, statistical checks with fixed seeds.

Every test runs on the CPU and, where one is present, on the CUDA device as well.
"""

from __future__ import annotations

import math

import msgspec
import pytest
import torch

from engine.sampler import (
    SampledToken,
    Sampler,
    SampleRow,
    apply_penalties,
    make_generator,
    needs_host,
)
from engine.sampling_params import SamplingParams

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Chi-square bound for at most 7 degrees of freedom (vocab 8): p < 1e-4 under the right law.
CHI_SQUARE_BOUND = 30.0
NUM_DRAWS = 8000


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


def random_logits(num_rows: int, vocab: int, seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(num_rows, vocab, generator=gen) * 2.0).to(device)  # (num_rows, vocab)


def row(
    params: SamplingParams,
    device: torch.device,
    prompt_ids: list[int] | None = None,
    output_ids: list[int] | None = None,
) -> SampleRow:
    return SampleRow(params, prompt_ids or [], output_ids or [], make_generator(params, device))


def draw_counts(logits_row: torch.Tensor, params: SamplingParams, seed: int) -> torch.Tensor:
    """Token counts (vocab,) of NUM_DRAWS unseeded draws from one row, under a fixed global seed."""
    device = logits_row.device
    batch = logits_row.expand(NUM_DRAWS, -1).contiguous()  # (NUM_DRAWS, vocab)
    rows = [SampleRow(params, [], [], None)] * NUM_DRAWS
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        tokens = [t.token_id for t in Sampler()(batch, rows)]
    return torch.bincount(torch.tensor(tokens), minlength=logits_row.shape[-1]).double()


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson statistic over the tokens with positive expected mass."""
    expected = probs.double().cpu() * counts.sum()
    keep = expected > 0
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum())


def sorted_probs(logits_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = logits_row.double().cpu().softmax(-1)
    return probs.sort(descending=True)


def renormalised(probs: torch.Tensor, allowed_ids: torch.Tensor) -> torch.Tensor:
    kept = torch.zeros_like(probs)
    kept[allowed_ids] = probs[allowed_ids]
    return kept / kept.sum()


def assert_draws_follow(counts: torch.Tensor, expected: torch.Tensor) -> None:
    outside = counts[expected == 0]
    assert outside.sum() == 0, f"drew forbidden tokens: counts {counts.tolist()}"
    stat = chi_square(counts, expected)
    assert stat < CHI_SQUARE_BOUND, f"chi-square {stat:.1f}; counts {counts.tolist()}"


# --- greedy ---------------------------------------------------------------------------------------


def test_greedy_matches_argmax(device: torch.device) -> None:
    logits = random_logits(6, 50, seed=1, device=device)
    rows = [row(SamplingParams(temperature=0.0), device) for _ in range(6)]
    tokens = Sampler()(logits, rows)
    assert [t.token_id for t in tokens] == logits.argmax(-1).tolist()
    assert all(t.logprob is None and t.top_logprobs is None for t in tokens)


@pytest.mark.parametrize("logprobs", [None, 2])  # fast path, then the general path
def test_greedy_ties_pick_lowest_id(device: torch.device, logprobs: int | None) -> None:
    logits = torch.tensor([[0.5, -1.0, 3.0, 1.0, 2.0, 3.0]], device=device)
    tokens = Sampler()(logits, [row(SamplingParams(temperature=0.0, logprobs=logprobs), device)])
    assert tokens[0].token_id == 2


def test_mixed_batch_keeps_greedy_rows_greedy(device: torch.device) -> None:
    logits = random_logits(5, 40, seed=2, device=device)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.5, seed=3),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.0, logprobs=1),
    ]
    tokens = Sampler()(logits, [row(p, device) for p in params])
    argmax = logits.argmax(-1).tolist()
    assert [tokens[i].token_id for i in (0, 2, 4)] == [argmax[i] for i in (0, 2, 4)]


def test_top_k_one_equals_greedy(device: torch.device) -> None:
    logits = random_logits(16, 64, seed=4, device=device)
    rows = [row(SamplingParams(temperature=1.0, top_k=1, seed=i), device) for i in range(16)]
    assert [t.token_id for t in Sampler()(logits, rows)] == logits.argmax(-1).tolist()


def test_tiny_temperature_is_finite_and_greedy(device: torch.device) -> None:
    logits = random_logits(8, 64, seed=5, device=device)
    rows = [row(SamplingParams(temperature=1e-8, seed=i), device) for i in range(8)]
    assert [t.token_id for t in Sampler()(logits, rows)] == logits.argmax(-1).tolist()


def test_input_logits_are_not_mutated(device: torch.device) -> None:
    logits = random_logits(2, 16, seed=6, device=device)
    before = logits.clone()
    params = SamplingParams(repetition_penalty=1.5, frequency_penalty=0.5, top_p=0.5, min_p=0.1)
    Sampler()(logits, [row(params, device, [1, 2], [3, 3]), row(params, device, [4], [])])
    assert torch.equal(logits, before)


# --- penalties ------------------------------------------------------------------------------------


def test_penalties_hand_computed(device: torch.device) -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]], device=device)
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    got = apply_penalties(logits, [row(params, device, prompt_ids=[0, 1], output_ids=[3, 3, 4])])
    # token 0: prompt, positive -> 2 / 2.                token 1: prompt, negative -> -1 * 2.
    # token 2, 5: unseen, unchanged.
    # token 3: twice in output -> 3 / 2 - 0.5 * 2 - 0.25. token 4: once -> -2 * 2 - 0.5 - 0.25.
    expected = torch.tensor([[1.0, -2.0, 0.5, 0.25, -4.75, 1.0]])
    torch.testing.assert_close(got.cpu(), expected)


def reference_penalties(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """Row by row, token by token, straight from the definitions."""
    out = logits.double().cpu().clone()
    for i, r in enumerate(rows):
        p = r.params
        for token in set(r.prompt_ids) | set(r.output_ids):
            value = out[i, token].item()
            out[i, token] = (
                value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
            )
        for token in set(r.output_ids):
            count = r.output_ids.count(token)
            out[i, token] -= p.frequency_penalty * count + p.presence_penalty
    return out


def test_penalties_match_reference_over_a_batch(device: torch.device) -> None:
    vocab = 30
    gen = torch.Generator().manual_seed(7)
    logits = random_logits(6, vocab, seed=8, device=device)
    params = [
        SamplingParams(repetition_penalty=1.3),
        SamplingParams(),  # no penalty: must pass through untouched
        SamplingParams(frequency_penalty=0.7, presence_penalty=-0.4),
        SamplingParams(repetition_penalty=0.8, frequency_penalty=-1.1, presence_penalty=1.9),
        SamplingParams(presence_penalty=0.6),
        SamplingParams(repetition_penalty=1.7),  # no output yet
    ]
    rows = []
    for i, p in enumerate(params):
        prompt = torch.randint(vocab, (12,), generator=gen).tolist()
        output = [] if i == 5 else torch.randint(vocab, (9,), generator=gen).tolist()
        rows.append(row(p, device, prompt, output))
    got = apply_penalties(logits, rows)
    # float32 against a float64 reference: a few ulps apart at most.
    expected = reference_penalties(logits, rows)
    torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[1], logits[1])


def test_greedy_sees_penalised_logits(device: torch.device) -> None:
    logits = random_logits(4, 20, seed=9, device=device)
    favourite = logits.argmax(-1).tolist()
    params = SamplingParams(temperature=0.0, frequency_penalty=2.0, presence_penalty=2.0)
    rows = [row(params, device, [], [favourite[i]] * 3) for i in range(4)]
    tokens = [t.token_id for t in Sampler()(logits, rows)]
    expected = reference_penalties(logits, rows).argmax(-1).tolist()
    assert tokens == expected
    assert tokens != favourite


def test_logit_bias_moves_greedy_in_its_row_only_after_the_penalties(device: torch.device) -> None:
    logits = random_logits(4, 20, seed=31, device=device)
    before = logits.clone()
    favourite = logits.argmax(-1).tolist()
    unlikely = logits.argmin(-1).tolist()
    params = [
        SamplingParams(temperature=0.0, logit_bias={favourite[0]: -100.0}),  # banned
        SamplingParams(temperature=0.0, logit_bias={unlikely[1]: 100.0}),  # forced
        SamplingParams(temperature=0.0),  # untouched in the same batch
        SamplingParams(temperature=0.0, frequency_penalty=2.0, logit_bias={unlikely[3]: 3.0}),
    ]
    rows = [row(p, device, [], [favourite[3]] * 2 if i == 3 else []) for i, p in enumerate(params)]
    assert all(needs_host(p) for p in params[:2]) and not needs_host(params[2])
    tokens = [t.token_id for t in Sampler()(logits, rows)]
    expected = reference_penalties(logits, rows)
    for i, p in enumerate(params):
        for token_id, bias in (p.logit_bias or {}).items():
            expected[i, token_id] += bias
    assert tokens == expected.argmax(-1).tolist()
    assert tokens[0] != favourite[0] and tokens[1] == unlikely[1] and tokens[2] == favourite[2]
    assert torch.equal(logits, before)


def test_logit_bias_reshapes_draws_but_not_logprobs(device: torch.device) -> None:
    logits_row = random_logits(1, 8, seed=32, device=device)[0]
    bias = {int(logits_row.argmax()): -100.0, int(logits_row.argmin()): 2.5}
    counts = draw_counts(logits_row, SamplingParams(logit_bias=bias), seed=33)
    expected = logits_row.double().cpu().clone()
    for token_id, value in bias.items():
        expected[token_id] += value
    assert_draws_follow(counts, expected.softmax(-1))
    (token,) = Sampler()(logits_row[None], [row(SamplingParams(logit_bias=bias, logprobs=0,
                                                                seed=4), device)])
    raw = logits_row.double().cpu().log_softmax(-1)
    assert token.logprob == pytest.approx(raw[token.token_id].item(), abs=1e-5)


# --- filters: never outside the allowed set, right frequencies inside it --------------------------


def test_top_k_samples_renormalised_top_set(device: torch.device) -> None:
    logits_row = random_logits(1, 8, seed=10, device=device)[0]
    _, order = sorted_probs(logits_row)
    counts = draw_counts(logits_row, SamplingParams(top_k=3), seed=11)
    assert_draws_follow(counts, renormalised(logits_row.double().cpu().softmax(-1), order[:3]))


def test_top_p_samples_smallest_set_reaching_p(device: torch.device) -> None:
    logits_row = random_logits(1, 8, seed=12, device=device)[0]
    probs, order = sorted_probs(logits_row)
    cumulative = probs.cumsum(0)
    top_p = float(cumulative[2] + cumulative[3]) / 2  # the first four tokens reach it, three don't
    counts = draw_counts(logits_row, SamplingParams(top_p=top_p), seed=13)
    assert_draws_follow(counts, renormalised(logits_row.double().cpu().softmax(-1), order[:4]))


def test_top_p_applies_to_top_k_survivors(device: torch.device) -> None:
    logits_row = random_logits(1, 8, seed=14, device=device)[0]
    probs, order = sorted_probs(logits_row)
    within_k = probs[:4] / probs[:4].sum()
    top_p = float(within_k.cumsum(0)[1] + within_k.cumsum(0)[2]) / 2  # three survivors
    # Against the unrenormalised mass the third token would not yet reach top_p, so a sampler that
    # skipped renormalisation would keep the fourth token too and this test would see it.
    assert probs.cumsum(0)[2] < top_p
    counts = draw_counts(logits_row, SamplingParams(top_k=4, top_p=top_p), seed=15)
    assert_draws_follow(counts, renormalised(logits_row.double().cpu().softmax(-1), order[:3]))


def test_min_p_drops_tokens_below_fraction_of_max(device: torch.device) -> None:
    logits_row = random_logits(1, 8, seed=16, device=device)[0]
    probs, order = sorted_probs(logits_row)
    ratio = probs / probs[0]
    min_p = float(ratio[2] + ratio[3]) / 2  # three tokens reach min_p * max_prob
    counts = draw_counts(logits_row, SamplingParams(min_p=min_p), seed=17)
    assert_draws_follow(counts, renormalised(logits_row.double().cpu().softmax(-1), order[:3]))


def test_temperature_reshapes_the_distribution(device: torch.device) -> None:
    logits_row = random_logits(1, 8, seed=18, device=device)[0]
    for temperature in (0.5, 1.7):
        counts = draw_counts(logits_row, SamplingParams(temperature=temperature), seed=19)
        expected = (logits_row.double().cpu() / temperature).softmax(-1)
        assert_draws_follow(counts, expected)
        # The same draws are far from the untempered law, so ignoring temperature would fail.
        assert chi_square(counts, logits_row.double().cpu().softmax(-1)) > 10 * CHI_SQUARE_BOUND


# --- seeds ----------------------------------------------------------------------------------------


def test_make_generator() -> None:
    assert make_generator(SamplingParams(), "cpu") is None
    first = make_generator(SamplingParams(seed=5), "cpu")
    second = make_generator(SamplingParams(seed=5), torch.device("cpu"))
    assert first is not None and second is not None
    assert torch.equal(torch.rand(8, generator=first), torch.rand(8, generator=second))


def test_seeded_row_ignores_batch_composition_and_order(device: torch.device) -> None:
    vocab, num_steps = 50, 12
    target_logits = random_logits(1, vocab, seed=20, device=device)  # (1, vocab)
    others = random_logits(3, vocab, seed=21, device=device)  # (3, vocab)
    target = SamplingParams(temperature=1.2, top_p=0.95, seed=1234)
    neighbours = [
        SamplingParams(temperature=0.9),  # unseeded: draws from the shared RNG
        SamplingParams(temperature=0.0, logprobs=3),  # greedy: forces the mixed-batch path
        SamplingParams(top_k=5, min_p=0.05, frequency_penalty=0.5, seed=99),
    ]

    def run(layout: list[int], seed: int) -> list[int]:
        """layout holds -1 for the target and i for neighbour i; returns the target's tokens."""
        params = [target if i < 0 else neighbours[i] for i in layout]
        params = [msgspec.structs.replace(p, seed=seed) if p is target else p for p in params]
        rows = [row(p, device, [1, 2, 3], []) for p in params]
        logits = torch.cat([target_logits if i < 0 else others[i : i + 1] for i in layout])
        where = layout.index(-1)
        picked = []
        for _ in range(num_steps):
            picked.append(Sampler()(logits, rows)[where].token_id)
        return picked

    alone = run([-1], seed=1234)
    assert run([0, -1, 2], seed=1234) == alone
    assert run([2, 1, 0, -1], seed=1234) == alone
    assert run([-1, 1], seed=1234) == alone
    assert run([-1], seed=4321) != alone  # the seed matters, so the equalities above mean something


# --- logprobs -------------------------------------------------------------------------------------


def test_logprobs_are_raw_sorted_and_consistent(device: torch.device) -> None:
    logits = random_logits(4, 40, seed=22, device=device)
    params = [
        SamplingParams(temperature=0.7, top_k=10, repetition_penalty=1.4, logprobs=5, seed=1),
        SamplingParams(temperature=0.0, frequency_penalty=1.0, logprobs=0),
        SamplingParams(temperature=1.0, seed=2),
        SamplingParams(temperature=1.3, logprobs=20, seed=3),
    ]
    rows = [row(p, device, [0, 1, 2], [3, 4, 4]) for p in params]
    tokens = Sampler()(logits, rows)
    raw = logits.double().cpu().log_softmax(-1)  # (4, 40): before penalties and temperature

    for i in (0, 1, 3):
        assert tokens[i].logprob == pytest.approx(raw[i, tokens[i].token_id].item(), abs=1e-5)
    assert tokens[1].top_logprobs == []
    assert tokens[2].logprob is None and tokens[2].top_logprobs is None
    for i, n in ((0, 5), (3, 20)):
        top = tokens[i].top_logprobs
        assert top is not None and len(top) == n
        values = [lp for _, lp in top]
        assert values == sorted(values, reverse=True)
        assert {t for t, _ in top} == set(raw[i].topk(n).indices.tolist())
        for token_id, lp in top:
            assert lp == pytest.approx(raw[i, token_id].item(), abs=1e-5)


def test_sampled_token_types(device: torch.device) -> None:
    logits = random_logits(1, 10, seed=23, device=device)
    (token,) = Sampler()(logits, [row(SamplingParams(logprobs=2, seed=0), device)])
    assert isinstance(token, SampledToken)
    assert isinstance(token.token_id, int) and isinstance(token.logprob, float)
    assert token.top_logprobs is not None
    assert all(isinstance(t, int) and isinstance(lp, float) for t, lp in token.top_logprobs)
    assert math.isfinite(token.logprob)

"""SamplingParams.validate(): each bad value names its field; each valid edge value passes."""

from __future__ import annotations

import math

import msgspec
import pytest

from engine.errors import InvalidRequestError
from engine.sampling_params import SamplingParams

VOCAB_SIZE = 1000

# (field, bad value): each one alone must be refused with .param == field.
INVALID = [
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("temperature", -0.1),
    ("temperature", 2.01),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("top_p", 0.0),
    ("top_p", -0.5),
    ("top_p", 1.01),
    ("top_p", math.nan),
    ("top_k", -1),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("min_p", math.nan),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", math.nan),
    ("repetition_penalty", math.inf),
    ("frequency_penalty", -2.5),
    ("frequency_penalty", 2.5),
    ("frequency_penalty", math.nan),
    ("presence_penalty", -2.01),
    ("presence_penalty", 3.0),
    ("presence_penalty", math.nan),
    ("seed", 2**64),
    ("seed", -(2**63) - 1),
    ("stop", [""]),
    ("stop", ["ok", ""]),
    ("stop", [f"s{i}" for i in range(17)]),
    ("logprobs", -1),
    ("logprobs", 21),
    ("stop_token_ids", [-1]),
    ("stop_token_ids", [5, VOCAB_SIZE]),
    ("logit_bias", {-1: 1.0}),
    ("logit_bias", {VOCAB_SIZE: 1.0}),
    ("logit_bias", {3: 100.5}),
    ("logit_bias", {3: -101.0}),
    ("logit_bias", {3: math.nan}),
]

# (field, good value) at or near the edges of each range.
VALID = [
    ("max_tokens", 1),
    ("temperature", 0.0),
    ("temperature", 2.0),
    ("top_p", 1e-6),
    ("top_p", 1.0),
    ("top_k", 0),
    ("top_k", 10 * VOCAB_SIZE),  # larger than the vocabulary simply keeps everything
    ("min_p", 0.0),
    ("min_p", 1.0),
    ("repetition_penalty", 1e-3),
    ("repetition_penalty", 5.0),
    ("frequency_penalty", -2.0),
    ("frequency_penalty", 2.0),
    ("presence_penalty", -2.0),
    ("presence_penalty", 2.0),
    ("seed", 0),
    ("seed", -(2**63)),
    ("seed", 2**64 - 1),
    ("stop", [f"s{i}" for i in range(16)]),
    ("logprobs", 0),
    ("logprobs", 20),
    ("stop_token_ids", [0, VOCAB_SIZE - 1]),
    ("logit_bias", {0: -100.0, VOCAB_SIZE - 1: 100.0}),
    ("logit_bias", {}),
]


def _ids(table: list[tuple[str, object]]) -> list[str]:
    return [f"{field}={value!r}"[:40] for field, value in table]


def test_defaults_are_valid() -> None:
    SamplingParams().validate()
    SamplingParams().validate(vocab_size=VOCAB_SIZE)


@pytest.mark.parametrize(("field", "value"), INVALID, ids=_ids(INVALID))
def test_invalid_value_names_its_field(field: str, value: object) -> None:
    params = msgspec.structs.replace(SamplingParams(), **{field: value})
    with pytest.raises(InvalidRequestError) as caught:
        params.validate(vocab_size=VOCAB_SIZE)
    assert caught.value.param == field
    assert caught.value.code == "invalid_value"
    assert field in caught.value.message


@pytest.mark.parametrize(("field", "value"), VALID, ids=_ids(VALID))
def test_valid_edge_passes(field: str, value: object) -> None:
    msgspec.structs.replace(SamplingParams(), **{field: value}).validate(vocab_size=VOCAB_SIZE)


def test_stop_token_ids_unchecked_against_vocab_when_size_unknown() -> None:
    SamplingParams(stop_token_ids=[10**6]).validate()


def test_validate_does_not_mutate() -> None:
    params = SamplingParams(temperature=0.5, stop=["x"], stop_token_ids=[3])
    before = msgspec.structs.asdict(params)
    params.validate(vocab_size=VOCAB_SIZE)
    assert msgspec.structs.asdict(params) == before


def test_greedy_means_temperature_zero() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert not SamplingParams(temperature=1e-3).greedy

"""Incremental detokenization and stop strings against the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest

from engine.detokenizer import IncrementalDetokenizer
from engine.sampling_params import SamplingParams
from engine.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok(default_model_path):
    return load_tokenizer(default_model_path)


def stream(tok, text, params, chunk=1):
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("Hello there", add_special_tokens=False),
                                   params)
    deltas = []
    for i in range(0, len(ids), chunk):
        detok.add_tokens(ids[i : i + chunk])
        deltas.append(detok.take_delta(final=False))
        if detok.stopped:
            break
    detok.flush()
    deltas.append(detok.take_delta(final=True))
    return detok, deltas


@pytest.mark.parametrize("chunk", [1, 3])
def test_deltas_reassemble_and_never_split_characters(tok, chunk):
    text = " naïve café — 日本語のテキスト 🚀🎉 done"
    detok, deltas = stream(tok, text, SamplingParams(), chunk)
    assert "".join(deltas) == detok.text == text
    assert all("\ufffd" not in d for d in deltas)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_stop_string_truncates_and_is_never_half_sent(tok, chunk):
    text = "The answer is 42. END OF ANSWER and more text"
    detok, deltas = stream(tok, text, SamplingParams(stop=["END OF"]), chunk)
    assert detok.stopped and detok.text == "The answer is 42. "
    assert "".join(deltas) == "The answer is 42. "
    detok, _ = stream(tok, text, SamplingParams(stop=["END OF"], include_stop_str_in_output=True))
    assert detok.text == "The answer is 42. END OF"


def test_earliest_stop_string_wins_and_multibyte_stop(tok):
    detok, _ = stream(tok, "abc 🚀 xyz stop", SamplingParams(stop=["stop", "🚀"]))
    assert detok.text == "abc "


def test_special_tokens_skipped_or_kept(tok):
    ids = tok.encode("hi", add_special_tokens=False) + [2]
    for skip, expected in ((True, "hi"), (False, "hi<|im_end|>")):
        detok = IncrementalDetokenizer(tok, [], SamplingParams(skip_special_tokens=skip))
        detok.add_tokens(ids)
        detok.flush()
        assert detok.text == expected


def test_tokens_after_the_stop_do_not_count(tok):
    # A speculative step hands several tokens at once; those after the stop are not output.
    ids = tok.encode("The answer is 42. END OF ANSWER and more", add_special_tokens=False)
    one_by_one = IncrementalDetokenizer(tok, [], SamplingParams(stop=["END OF"]))
    used = next(i + 1 for i, t in enumerate(ids) if one_by_one.add_tokens([t]) and
                one_by_one.stopped)
    assert used < len(ids)
    at_once = IncrementalDetokenizer(tok, [], SamplingParams(stop=["END OF"]))
    assert at_once.add_tokens(ids) == used and at_once.text == one_by_one.text
    assert at_once.add_tokens(ids[:2]) == 0, "nothing counts once stopped"

"""``POST /v1/completions`` through the real ``openai`` client against the running server:
string and token prompts, lists of prompts with ``n`` choices each, ``echo``, ``logprobs``,
stop strings, the default token limit, and streaming."""

from __future__ import annotations

import httpx
import pytest
from transformers import AutoTokenizer

from tests.runtime.conftest import API_KEY
from tests.runtime.test_chat_params import MODEL

PROMPT = "The three most useful tools for a gardener are"


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    return AutoTokenizer.from_pretrained(default_model_path)


def test_string_and_token_prompts_give_the_same_greedy_text(client, tokenizer):
    ids = tokenizer.encode(PROMPT)
    by_text = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0,
                                        max_tokens=12, extra_body={"ignore_eos": True})
    by_ids = client.completions.create(model=MODEL, prompt=ids, temperature=0, max_tokens=12,
                                       extra_body={"ignore_eos": True})
    assert by_text.object == "text_completion" and by_text.id.startswith("cmpl-")
    (choice,) = by_text.choices
    assert choice.text and choice.text == by_ids.choices[0].text
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert by_text.usage.prompt_tokens == len(ids) and by_text.usage.completion_tokens == 12


def test_max_tokens_defaults_to_sixteen_and_null_means_until_the_end(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16 and out.choices[0].finish_reason == "length"
    short = client.completions.create(model=MODEL, prompt="Say hi.", temperature=0,
                                      max_tokens=None)
    assert short.choices[0].finish_reason == "stop"  # ended by EOS, not by a default limit


def test_echo_puts_the_prompt_before_the_text(client):
    plain = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=6)
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=6,
                                       echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text


def test_prompts_times_n_choices_are_numbered_and_seeded(client):
    prompts = [PROMPT, "Once upon a time"]
    both = client.completions.create(model=MODEL, prompt=prompts, n=2, temperature=1.0, seed=5,
                                     max_tokens=8)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    singles = [client.completions.create(model=MODEL, prompt=p, temperature=1.0, seed=5 + j,
                                         max_tokens=8) for p in prompts for j in range(2)]
    assert [c.text for c in both.choices] == [s.choices[0].text for s in singles]
    assert both.choices[0].text != both.choices[1].text  # seed + choice number
    assert both.usage.prompt_tokens == singles[0].usage.prompt_tokens + \
        singles[2].usage.prompt_tokens  # each prompt once, not once per choice
    assert both.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)


def test_logprobs_in_the_legacy_shape(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=6,
                                    logprobs=3, echo=False)
    (choice,) = out.choices
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == \
        len(lp.text_offset) == out.usage.completion_tokens == 6
    assert "".join(lp.tokens) == choice.text
    offset = 0
    for token, value, top, start in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs,
                                        lp.text_offset):
        assert start == offset and value <= 0.0
        assert 3 <= len(top) <= 4 and top[token] == value
        assert value == max(top.values())  # greedy picked the most likely token
        offset += len(token)


def test_stop_string_cuts_the_text(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=16,
                                      extra_body={"ignore_eos": True}).choices[0].text
    word = whole.split()[2]
    cut = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=16,
                                    stop=[word]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == whole[:whole.index(word)]


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_choices_match_the_json_answer(client, echo):
    body = dict(model=MODEL, prompt=[PROMPT, "Once upon a time"], n=2, temperature=1.0,
                seed=9, max_tokens=8, echo=echo)
    whole = client.completions.create(**body)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                            **body))
    text, finish = {i: "" for i in range(4)}, {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        text[choice.index] += choice.text
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert [text[i] for i in range(4)] == [c.text for c in whole.choices]
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def _body(**fields):
    return {"model": MODEL, "prompt": "hi", "max_tokens": 4, **fields}


ERROR_CASES = [
    # (name, body, param, code)
    ("no prompt", {"model": MODEL}, "prompt", "missing_required_parameter"),
    ("empty prompt list", _body(prompt=[]), "prompt", None),
    ("empty string", _body(prompt=""), "prompt", "empty_string"),
    ("prompt a number", _body(prompt=7), "prompt", None),
    ("token outside the vocabulary", _body(prompt=[1, 2, 10**9]), "prompt", None),
    ("mixed prompt list", _body(prompt=["a", 5]), "prompt", None),
    ("empty token list among prompts", _body(prompt=[[1, 2], []]), "prompt[1]", "empty_array"),
    ("suffix", _body(suffix="end"), "suffix", "unsupported_value"),
    ("best_of above n", _body(best_of=3), "best_of", "unsupported_value"),
    ("echo with logprobs", _body(echo=True, logprobs=1), "echo", "unsupported_value"),
    ("logprobs too many", _body(logprobs=50), "logprobs", None),
    ("n zero", _body(n=0), "n", None),
    ("choices over the concurrency limit", _body(prompt=["a", "b", "c"], n=2), "prompt",
     "unsupported_value"),
    ("prompt over context", _body(prompt="word " * 5000), "prompt", "context_length_exceeded"),
    ("max_tokens over context", _body(max_tokens=10**6), "max_tokens",
     "context_length_exceeded"),
    ("temperature out of range", _body(temperature=3), "temperature", None),
    ("logit_bias key not a token id", _body(logit_bias={"x": 1}), "logit_bias", None),
    ("unknown model", _body(model="gpt-9"), "model", "model_not_found"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_requests_get_openai_shaped_errors(server, case):
    _, body, param, code = case
    resp = httpx.post(server.base_url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status_code == (404 if code == "model_not_found" else 400), resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["code"] == code, error


def test_leaving_a_stream_of_several_choices_aborts_all_of_them(server, client):
    """Every choice still generating is aborted when the client goes away: no request runs on
    and no KV page stays in use."""
    from tests.runtime.test_server_errors import wait_for_gauge

    stream = client.completions.create(model=MODEL, prompt=[PROMPT, "Once upon a time"], n=2,
                                       max_tokens=2000, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    seen = set()
    for chunk in stream:
        seen.add(chunk.choices[0].index)
        if len(seen) == 4:
            break
    stream.close()
    wait_for_gauge(server, "agentspeed_running_requests", 0)
    wait_for_gauge(server, 'agentspeed_kv_pages{state="in_use"}', 0)


def test_a_long_prompt_with_several_choices_is_prefilled_once(server, client):
    """Each choice of a 300-token prompt starts from the KV of one shared prefill (the engine's
    cache counter moves by about a prompt per choice), while usage reports the prompt's own
    prefill (fresh: nothing cached); greedy choices still equal the single answer."""
    from tests.runtime.test_server_openai import metric_values

    prompt = [1000 + (i * 7919) % 40000 for i in range(300)]  # token IDs no other test sends
    name = "agentspeed_cached_prompt_tokens_total"
    before = metric_values(server)[name]
    both = client.completions.create(model=MODEL, prompt=prompt, n=2, temperature=0,
                                     max_tokens=4, extra_body={"ignore_eos": True})
    moved = metric_values(server)[name] - before
    assert both.usage.prompt_tokens == 300 and both.usage.prompt_tokens_details.cached_tokens == 0
    assert moved >= 2 * (300 - 16)  # both choices hit all but (at most) the last page
    single = client.completions.create(model=MODEL, prompt=prompt[:-1] + [999], temperature=0,
                                       max_tokens=4, extra_body={"ignore_eos": True})
    assert single.usage.prompt_tokens_details.cached_tokens >= 300 - 16  # the KV was kept
    again = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=4,
                                      extra_body={"ignore_eos": True})
    assert [c.text for c in both.choices] == [again.choices[0].text] * 2

"""``GET /v1/models/{id}``, ``POST /tokenize`` and ``POST /detokenize`` against the running
server: the counts a client budgets its context with are the ones generation uses."""

from __future__ import annotations

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.runtime.conftest import API_KEY
from tests.runtime.test_chat_params import MODEL, TOOLS

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEXT = "Agents keep long histories; héllo, wörld! 🙂"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the weather in Paris?"}]


def post(server, path: str, body: dict, headers=AUTH) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60)


def test_retrieve_the_served_model(client):
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    assert model.model_extra["max_model_len"] == 4096  # the test server's --max-model-len
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_tokenize_text_matches_the_tokenizer_and_detokenize_inverts_it(server,
                                                                       default_model_path):
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    out = post(server, "/tokenize", {"model": MODEL, "prompt": TEXT,
                                     "return_token_strs": True}).json()
    assert out["tokens"] == tokenizer.encode(TEXT) and out["count"] == len(out["tokens"])
    assert out["max_model_len"] == 4096
    assert out["token_strs"] == tokenizer.convert_ids_to_tokens(out["tokens"])
    back = post(server, "/detokenize", {"model": MODEL, "tokens": out["tokens"]}).json()
    assert back == {"prompt": TEXT}


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["plain", "tools"])
def test_tokenize_messages_counts_the_prompt_a_chat_completion_prefills(server, client, tools):
    body = {"messages": MESSAGES, **({"tools": tools} if tools else {})}
    out = post(server, "/tokenize", body).json()
    chat = client.chat.completions.create(model=MODEL, max_tokens=1, temperature=0, **body)
    assert out["count"] == chat.usage.prompt_tokens > 0
    if tools:  # the tool specs are in the rendered prompt
        plain = post(server, "/tokenize", {"messages": MESSAGES}).json()
        assert out["count"] > plain["count"]


@pytest.mark.parametrize("path, body, status, param", [
    ("/tokenize", {"prompt": "x", "messages": MESSAGES}, 400, "messages"),
    ("/tokenize", {"model": MODEL}, 400, "prompt"),
    ("/tokenize", {"messages": []}, 400, "messages"),
    ("/tokenize", {"prompt": "x", "model": "gpt-9"}, 404, "model"),
    ("/detokenize", {"tokens": [1, 10**9]}, 400, "tokens[1]"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
])
def test_bad_tokenizer_requests_get_openai_shaped_errors(server, path, body, status, param):
    resp = post(server, path, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"], error


def test_the_tokenizer_routes_need_the_key(server):
    assert post(server, "/tokenize", {"prompt": "x"}, headers={}).status_code == 401
    assert post(server, "/detokenize", {"tokens": [1]}, headers={}).status_code == 401

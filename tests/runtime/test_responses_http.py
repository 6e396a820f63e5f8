"""``/v1/responses`` over HTTP against the running server: text.format, top_p, store=false,
DELETE, and the raw SSE stream (event names, order and sequence numbers, read off the wire).
"""

from __future__ import annotations

import itertools
import json

import httpx
import jsonschema
import pytest

from tests.runtime.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "SmolLM2-135M-Instruct"
CAT = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                        "age": {"type": "integer"}},
       "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}


def post(server, **body) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/responses", json=body, headers=AUTH, timeout=120)


def test_text_format_json_schema_output_validates(client):
    out = client.responses.create(
        model=MODEL, input="Describe a cat as JSON.", max_output_tokens=100, temperature=0,
        text={"format": {"type": "json_schema", "name": "cat", "schema": CAT, "strict": True}})
    assert out.status == "completed", out
    jsonschema.validate(json.loads(out.output_text), CAT)


def test_tiny_top_p_gives_the_greedy_answer(client):
    def ask(**sampling):
        return client.responses.create(model=MODEL, input="Write a short poem about the sea.",
                                       max_output_tokens=24, **sampling)

    greedy, nucleus = ask(temperature=0), ask(temperature=1.0, top_p=1e-6)
    assert nucleus.top_p == 1e-6 and nucleus.output_text == greedy.output_text


def test_store_false_is_neither_kept_nor_continued(server):
    first = post(server, input="Say yes.", max_output_tokens=4, store=False).json()
    assert first["store"] is False and first["status"] in ("completed", "incomplete")
    got = httpx.get(f"{server.base_url}/v1/responses/{first['id']}", headers=AUTH)
    assert got.status_code == 404, got.text
    cont = post(server, input="And again.", previous_response_id=first["id"],
                max_output_tokens=4)
    assert cont.status_code == 400
    assert cont.json()["error"]["code"] == "previous_response_not_found"


def test_delete_then_get_is_404_and_the_chain_is_gone(server):
    first = post(server, input="Say yes.", max_output_tokens=4).json()
    url = f"{server.base_url}/v1/responses/{first['id']}"
    assert httpx.get(url, headers=AUTH).json()["id"] == first["id"]  # stored until deleted
    deleted = httpx.delete(url, headers=AUTH)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": first["id"], "object": "response", "deleted": True}
    assert httpx.get(url, headers=AUTH).status_code == 404
    assert httpx.delete(url, headers=AUTH).status_code == 404
    cont = post(server, input="More.", previous_response_id=first["id"], max_output_tokens=4)
    assert cont.json()["error"]["code"] == "previous_response_not_found"


# ------------------------------------------------------------------------------------ SSE
def sse(server, **body) -> list[dict]:
    """The events of one streamed response, read from the raw SSE frames."""
    events, lines = [], []
    with httpx.stream("POST", server.base_url + "/v1/responses", headers=AUTH, timeout=120,
                      json={"model": MODEL, "temperature": 0, "stream": True, **body}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line:
                lines.append(line)
                continue
            name, data = lines  # one "event:" and one "data:" line per frame
            assert name.startswith("event: ") and data.startswith("data: "), lines
            event = json.loads(data.removeprefix("data: "))
            assert event["type"] == name.removeprefix("event: ")
            events.append(event)
            lines = []
    assert not lines, "the stream ended inside a frame"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def kinds(events: list[dict]) -> list[str]:
    """Event types, each run of deltas as one entry."""
    return [kind for kind, _ in itertools.groupby(e["type"] for e in events)]


TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta",
               "response.output_text.done", "response.content_part.done",
               "response.output_item.done"]


@pytest.mark.parametrize("max_output_tokens,status", [(64, "completed"), (3, "incomplete")])
def test_sse_text_answer_event_order(server, max_output_tokens, status):
    events = sse(server, input="Name one colour.", max_output_tokens=max_output_tokens)
    assert kinds(events) == TEXT_EVENTS + [f"response.{status}"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    item = events[-2]["item"]
    assert events[-4]["text"] == text and events[-3]["part"]["text"] == text
    assert item["type"] == "message" and item["content"][0]["text"] == text
    assert item["status"] == status  # an item cut by the token limit is incomplete too
    final = events[-1]["response"]
    assert final["status"] == status and final["output"] == [item]
    if status == "incomplete":
        assert final["incomplete_details"] == {"reason": "max_output_tokens"}
        assert final["usage"]["output_tokens"] == max_output_tokens


def test_sse_forced_function_call(server):
    events = sse(server, input="What is the weather in Paris?", max_output_tokens=64,
                 tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER}],
                 tool_choice={"type": "function", "name": "get_weather"})
    assert kinds(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    added, done, item_done = events[2]["item"], events[-3], events[-2]["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress"
    streamed = "".join(e["delta"] for e in events
                       if e["type"] == "response.function_call_arguments.delta")
    assert done["arguments"] == streamed and done["item_id"] == added["id"]
    assert item_done == {**added, "arguments": streamed, "status": "completed"}
    jsonschema.validate(json.loads(streamed), WEATHER)
    assert events[-1]["response"]["output"] == [item_done]

"""Chat Completions wire types and errors, checked against the real ``openai`` client.

Requests are the bytes the client puts on the wire; responses and chunks go back through the
client with strict response validation, and through its pydantic models with a check that every
field we send is one the client knows and keeps.
"""

from __future__ import annotations

import json

import msgspec
import pytest
from openai.types.chat import ChatCompletion as OAIChatCompletion
from openai.types.chat import ChatCompletionChunk as OAIChatCompletionChunk

from runtime.protocol import chat
from runtime.protocol.codec import decode_request, encode_json
from runtime.protocol.errors import APIError, error_body, from_msgspec_error
from tests.runtime.openai_client import assert_client_keeps, fake_client

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": False},
        "strict": True,
    },
}


def completion_with_tool_call() -> chat.ChatCompletion:
    return chat.ChatCompletion(
        id="chatcmpl-1", created=1_700_000_000, model="smollm2",
        choices=[chat.Choice(
            index=0, finish_reason="tool_calls",
            message=chat.ChatCompletionMessage(content=None, tool_calls=[chat.ToolCall(
                id="call_1", function=chat.FunctionCall("get_weather", '{"city":"Paris"}'))]),
        )],
        usage=chat.Usage.of(prompt_tokens=50, completion_tokens=9, cached_tokens=32),
    )


def test_client_request_decodes_and_completion_parses_back():
    client, seen = fake_client(encode_json(completion_with_tool_call()))
    out = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in Paris?", "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_0", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        ],
        tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {
            "name": "w", "schema": {"type": "object"}, "strict": True}},
        max_completion_tokens=64, temperature=0.5, top_p=0.9, seed=7, stop=["\n\n", "END"],
        logprobs=True, top_logprobs=2, n=1, frequency_penalty=0.1, presence_penalty=0.2,
        user="u1", extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1,
                               "ignore_eos": True, "some_future_field": {"x": 1}},
    )
    req = decode_request(seen[0], chat.ChatCompletionRequest)
    system, developer, user, assistant, tool = req.messages
    assert system == chat.SystemMessage(content="Be brief.")
    assert developer.content == [chat.TextPart("Use tools.")]
    assert (user.content, user.name) == ("Weather in Paris?", "ann")
    assert assistant.content is None
    assert assistant.tool_calls == [chat.ToolCall("call_0", chat.FunctionCall(
        "get_weather", '{"city":"Rome"}'))]
    assert (tool.tool_call_id, tool.content) == ("call_0", "sunny")
    assert req.tools[0].function.name == "get_weather" and req.tools[0].function.strict is True
    assert req.tools[0].function.parameters["required"] == ["city"]
    assert req.tool_choice == chat.NamedToolChoice(chat.NamedFunction("get_weather"))
    assert req.response_format == chat.ResponseFormatJSONSchema(chat.JSONSchemaSpec(
        name="w", schema={"type": "object"}, strict=True))
    assert (req.max_output_tokens, req.stop_list, req.seed, req.top_logprobs) == \
        (64, ["\n\n", "END"], 7, 2)
    assert (req.top_k, req.min_p, req.repetition_penalty, req.ignore_eos) == (20, 0.05, 1.1, True)
    assert req.parallel_tool_calls is False and req.logprobs is True and not req.stream
    # A request survives our own encode/decode unchanged.
    assert decode_request(encode_json(req), chat.ChatCompletionRequest) == req

    call = out.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == \
        ("call_1", "get_weather", '{"city":"Paris"}')
    assert out.choices[0].finish_reason == "tool_calls" and out.choices[0].message.content is None
    assert (out.usage.prompt_tokens, out.usage.total_tokens) == (50, 59)
    assert out.usage.prompt_tokens_details.cached_tokens == 32


def test_completion_with_logprobs_keeps_every_field():
    lp = chat.TokenLogprob(token="Hi", logprob=-0.25, bytes=[72, 105], top_logprobs=[
        chat.TopLogprob(token="Hi", logprob=-0.25, bytes=[72, 105]),
        chat.TopLogprob(token="\ufffd", logprob=-3.5, bytes=None)])
    completion = chat.ChatCompletion(
        id="chatcmpl-2", created=1, model="m", system_fingerprint="fp_1",
        choices=[chat.Choice(index=0, finish_reason="length",
                             message=chat.ChatCompletionMessage(content="Hi"),
                             logprobs=chat.ChoiceLogprobs(content=[lp]))],
        usage=chat.Usage.of(3, 1))
    encoded = encode_json(completion)
    body = json.loads(encoded)
    # Required-but-nullable fields are on the wire as null; tool_calls is left out.
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi", "refusal": None,
                                             "annotations": []}
    assert body["object"] == "chat.completion"
    assert_client_keeps(OAIChatCompletion.model_validate_json(encoded), encoded)
    assert msgspec.json.decode(encoded, type=chat.ChatCompletion) == completion


def stream_chunks() -> list[chat.ChatCompletionChunk]:
    def chunk(delta: chat.ChoiceDelta, finish: chat.FinishReason | None = None,
              logprobs: chat.ChoiceLogprobs | None = None) -> chat.ChatCompletionChunk:
        return chat.ChatCompletionChunk(
            id="chatcmpl-3", created=2, model="m", usage=None, choices=[chat.ChunkChoice(
                index=0, delta=delta, finish_reason=finish, logprobs=logprobs)])

    tool_head = chat.DeltaToolCall(index=0, id="call_7", type="function",
                                   function=chat.DeltaFunction(name="get_weather", arguments=""))
    return [
        chunk(chat.ChoiceDelta(role="assistant", content="")),
        chunk(chat.ChoiceDelta(content="Let me check."), logprobs=chat.ChoiceLogprobs(content=[
            chat.TokenLogprob(token="Let", logprob=-0.5, bytes=[76, 101, 116], top_logprobs=[])])),
        chunk(chat.ChoiceDelta(tool_calls=[tool_head])),
        chunk(chat.ChoiceDelta(tool_calls=[chat.DeltaToolCall(
            index=0, function=chat.DeltaFunction(arguments='{"city":'))])),
        chunk(chat.ChoiceDelta(tool_calls=[chat.DeltaToolCall(
            index=0, function=chat.DeltaFunction(arguments='"Oslo"}'))])),
        chunk(chat.ChoiceDelta(), finish="tool_calls"),
        chat.ChatCompletionChunk(id="chatcmpl-3", created=2, model="m", choices=[],
                                 usage=chat.Usage.of(20, 12, cached_tokens=16)),
    ]


def test_stream_chunks_through_client():
    chunks = stream_chunks()
    for c in chunks:
        encoded = encode_json(c)
        assert_client_keeps(OAIChatCompletionChunk.model_validate_json(encoded), encoded)
    assert json.loads(encode_json(chunks[3]))["choices"][0]["delta"] == \
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}
    assert json.loads(encode_json(chunks[0]))["usage"] is None
    no_usage = chat.ChatCompletionChunk(id="c", created=0, model="m", choices=[])
    assert "usage" not in json.loads(encode_json(no_usage))

    sse = b"".join(b"data: " + encode_json(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    client, seen = fake_client(sse, "text/event-stream")
    got = list(client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert decode_request(seen[0], chat.ChatCompletionRequest).include_usage
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "Let me check."
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments
                   for c in got if c.choices and c.choices[0].delta.tool_calls)
    assert args == '{"city":"Oslo"}'
    assert got[2].choices[0].delta.tool_calls[0].id == "call_7"
    assert [c.choices[0].finish_reason for c in got if c.choices][-1] == "tool_calls"
    assert got[-1].usage.prompt_tokens_details.cached_tokens == 16


def with_hi(**fields: object) -> str:
    """A body with one user message plus ``fields``."""
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize("body, param, code", [
    ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role", "invalid_value"),
    ('{"messages": [{"role": "user"}]}', "messages[0].content", "missing_required_parameter"),
    ('{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}',
     "messages[0].content[0].type", "invalid_value"),
    ('{"messages": [{"role": "tool", "content": "x"}]}', "messages[0].tool_call_id",
     "missing_required_parameter"),
    ('{"model": "m"}', "messages", "missing_required_parameter"),
    (with_hi(max_tokens="ten"), "max_tokens", "invalid_type"),
    (with_hi(tool_choice="sometimes"), "tool_choice", "invalid_value"),
    (with_hi(tools=[{"type": "custom", "custom": {}}]), "tools[0].type", "invalid_value"),
    (with_hi(stop=5), "stop", "invalid_type"),
    (with_hi(n=0), "n", None),
    (with_hi(n=129), "n", None),
    ('{"messages": []}', "messages", "empty_array"),
    ('{"messages": [', None, "invalid_json"),
    ('[1, 2]', None, "invalid_type"),
])
def test_malformed_chat_bodies_name_the_parameter(body, param, code):
    with pytest.raises(APIError) as info:
        decode_request(body.encode(), chat.ChatCompletionRequest)
    err = info.value
    assert (err.status, err.type, err.param, err.code) == \
        (400, "invalid_request_error", param, code)
    if param is not None:
        assert param in err.message
    assert error_body(err) == {"error": {"message": err.message, "type": "invalid_request_error",
                                         "param": param, "code": code}}


def test_n_outside_its_range_is_rejected_with_a_clear_message():
    with pytest.raises(APIError, match=r"n must be between 1 and 128, got 0") as info:
        decode_request(with_hi(n=0).encode(), chat.ChatCompletionRequest)
    assert info.value.param == "n"
    for n in (1, 2, 128):
        assert decode_request(with_hi(n=n).encode(), chat.ChatCompletionRequest).n == n


def test_msgspec_error_paths_map_to_params():
    def param_of(message: str) -> str | None:
        return from_msgspec_error(msgspec.ValidationError(message)).param

    assert param_of("Expected `int`, got `str` - at `$.tools[2].function.strict`") == \
        "tools[2].function.strict"
    assert param_of("Object missing required field `name` - at `$.tools[0].function`") == \
        "tools[0].function.name"
    assert param_of("Object missing required field `model`") == "model"
    assert param_of("Expected `object`, got `array`") is None

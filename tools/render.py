"""Chat rendering through the model's own template, whole or incrementally (token-exact).

A continuation never re-renders history: a session keeps the exact tokens the model saw and
produced, and only the *new* messages are rendered. To get the template's text for just those,
we render a placeholder history with and without them and keep the difference; the seam sits
right after an end-of-turn token (or a rendered turn boundary), where tokenization restarts, so
``old tokens + tokens(delta)`` equals what a full render would give for the same text.

Templates that know tools (Qwen2.5/3 and similar) get them natively. Others get a Hermes-style
block in the system message, assistant tool calls as ``<tool_call>`` JSON, and tool results as
``<tool_response>`` blocks in a user turn.
"""

from __future__ import annotations

import json
from typing import Any

_PLACEHOLDER = [
    {"role": "system", "content": "\u2063S"},
    {"role": "user", "content": "\u2063U"},
    {"role": "assistant", "content": "\u2063A"},
]

_TOOLS_PREAMBLE = (
    "# Tools\n\nYou can call functions to help with the user's request. Their signatures, as "
    "JSON schemas, are listed between <tools> and </tools>:\n<tools>\n{tools}\n</tools>\n\n"
    "To call a function, answer with one block per call, each holding a JSON object with the "
    "function's name and its arguments:\n<tool_call>\n"
    '{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}\n</tool_call>'
)


class RenderError(ValueError):
    """The messages cannot be rendered (bad roles, or a template that refuses them)."""


class ChatRenderer:
    def __init__(self, tokenizer: Any, end_of_turn_id: int) -> None:
        self.tokenizer = tokenizer
        self.end_of_turn_id = end_of_turn_id
        self.end_of_turn_text = tokenizer.convert_ids_to_tokens(end_of_turn_id)
        template = tokenizer.chat_template or ""
        self.native_tools = "tools" in template and "tool_call" in template

    # --------------------------------------------------------------- public
    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a whole conversation (the first turn of a session)."""
        text = self._text(messages, tools, add_generation_prompt)
        return self._encode(text)

    def render_continuation(self, new_messages: list[dict[str, Any]],
                            tools: list[dict[str, Any]] | None = None,
                            after_end_of_turn: bool = True,
                            add_generation_prompt: bool = True) -> list[int]:
        """Tokens to append to a session's exact history for ``new_messages``.

        ``after_end_of_turn``: the history ends with the model's end-of-turn token (a generated
        turn); otherwise it ends where a rendered conversation without generation prompt ends.
        """
        base = self._text(_PLACEHOLDER, tools, add_generation_prompt=False)
        full = self._text(_PLACEHOLDER + new_messages, tools, add_generation_prompt)
        if not full.startswith(base):
            raise RenderError("the chat template rewrites earlier turns; cannot continue exactly")
        if after_end_of_turn:
            cut = base.find(self.end_of_turn_text, base.rindex("\u2063A"))
            if cut < 0:
                raise RenderError("the chat template does not close assistant turns")
            cut += len(self.end_of_turn_text)
        else:
            cut = len(base)
        return self._encode(full[cut:])

    # ------------------------------------------------------------- internals
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _text(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
              add_generation_prompt: bool) -> str:
        for i, message in enumerate(messages):
            if message.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                raise RenderError(f"messages[{i}].role {message.get('role')!r} is not supported")
        kwargs: dict[str, Any] = {}
        if self.native_tools:
            messages = [self._native_message(m) for m in messages]
            if tools:
                kwargs["tools"] = [{"type": "function", "function": t} for t in tools]
        else:
            messages = self._hermes_messages(messages, tools)
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
        except Exception as exc:  # jinja raises on what a template refuses
            raise RenderError(f"chat template failed: {exc}") from exc

    @staticmethod
    def _native_message(message: dict[str, Any]) -> dict[str, Any]:
        message = dict(message)
        if message["role"] == "developer":
            message["role"] = "system"
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                fn = call["function"]
                calls.append({"type": "function", "id": call.get("id"), "function": {
                    "name": fn["name"], "arguments": _loads_or_raw(fn["arguments"])}})
            message["tool_calls"] = calls
        message.setdefault("content", "")
        if message["content"] is None:
            message["content"] = ""
        return message

    def _hermes_messages(self, messages: list[dict[str, Any]],
                         tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for message in messages:
            role, content = message["role"], message.get("content") or ""
            if role == "developer":
                role = "system"
            if role == "assistant" and message.get("tool_calls"):
                blocks = [_tool_call_block(c["function"]) for c in message["tool_calls"]]
                content = "\n".join(([content] if content else []) + blocks)
            if role == "tool":
                block = f"<tool_response>\n{content}\n</tool_response>"
                if out and out[-1].get("_tool_results"):
                    out[-1]["content"] += "\n" + block
                    continue
                out.append({"role": "user", "content": block, "_tool_results": True})
                continue
            out.append({"role": role, "content": content})
        if tools:
            block = _TOOLS_PREAMBLE.format(tools="\n".join(json.dumps(t) for t in tools))
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
            else:
                out.insert(0, {"role": "system", "content": block})
        return [{"role": m["role"], "content": m["content"]} for m in out]


def _tool_call_block(function: dict[str, Any]) -> str:
    arguments = function.get("arguments") or "{}"
    return (f'<tool_call>\n{{"name": {json.dumps(function["name"])}, '
            f'"arguments": {arguments}}}\n</tool_call>')


def _loads_or_raw(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (TypeError, json.JSONDecodeError):
        return arguments

"""From wire requests to what the engine and the renderer take: messages, tools, sampling.

Everything a client can get wrong is checked here, before any engine state is touched, and
raised as an ``APIError`` naming the parameter.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.errors import InvalidRequestError
from engine.sampling_params import SamplingParams
from runtime.protocol import chat as chat_types
from runtime.protocol import completions as completion_types
from runtime.protocol import responses as resp_types
from runtime.protocol.errors import APIError, invalid
from runtime.protocol.extensions import WIRE_NAMES, SpeculativeOptions
from runtime.state import ServerState


def text_of(content: Any, param: str) -> str:
    """Plain text of a message content: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        text = getattr(part, "text", None)
        if text is None:
            text = getattr(part, "refusal", None)
        if text is None:
            raise invalid(f"{param} holds a content part this server cannot read", param)
        parts.append(text)
    return "".join(parts)


# ------------------------------------------------------------------- chat completions
def chat_messages(request: chat_types.ChatCompletionRequest) -> list[dict[str, Any]]:
    messages = []
    for i, m in enumerate(request.messages):
        param = f"messages[{i}].content"
        role = type(m).__struct_config__.tag
        out: dict[str, Any] = {"role": role, "content": text_of(m.content, param)}
        if role == "assistant" and m.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in m.tool_calls]
        if role == "tool":
            out["tool_call_id"] = m.tool_call_id
        messages.append(out)
    return messages


def render_chat(state: ServerState, messages: list[dict[str, Any]],
                tools: list[dict[str, Any]]) -> list[int]:
    """The prompt tokens of a chat: the messages, the tools, the generation prompt."""
    from tools.render import RenderError

    try:
        return state.renderer.render(messages, tools or None)
    except RenderError as exc:
        raise invalid(str(exc), "messages") from None


def chat_tools(request: chat_types.ChatCompletionRequest) -> list[dict[str, Any]]:
    return [_tool_spec(t.function.name, t.function.description, t.function.parameters)
            for t in request.tools or []]


def _tool_spec(name: str, description: str | None, parameters: dict | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name}
    if description:
        spec["description"] = description
    spec["parameters"] = parameters or {"type": "object", "properties": {}}
    return spec


def chat_sampling(request: chat_types.ChatCompletionRequest,
                  vocab_size: int | None = None) -> SamplingParams:
    logprobs = None
    if request.logprobs:
        logprobs = request.top_logprobs or 0
    elif request.top_logprobs:
        raise invalid("top_logprobs needs logprobs=true", "top_logprobs")
    return _sampling(
        max_tokens=("max_completion_tokens" if request.max_completion_tokens is not None
                    else "max_tokens", request.max_output_tokens),
        temperature=request.temperature, top_p=request.top_p, seed=request.seed,
        stop=request.stop_list, logprobs=logprobs,
        frequency_penalty=request.frequency_penalty, presence_penalty=request.presence_penalty,
        top_k=request.top_k, min_p=request.min_p, repetition_penalty=request.repetition_penalty,
        logit_bias=_logit_bias(request.logit_bias), ignore_eos=request.ignore_eos,
        vocab_size=vocab_size, **_speculative(request.speculative))


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's ``logit_bias`` (token ids as JSON object keys) with integer keys."""
    if not raw:
        return None
    for key in raw:
        if not (key.isascii() and key.isdigit()):
            raise invalid(f"Invalid key in 'logit_bias': {key!r} is not a token ID.",
                          "logit_bias")
    return {int(key): bias for key, bias in raw.items()}


_SEED_SPAN = 2**64


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Sampling of choice ``index`` of several (``n``): seeded requests get ``seed + index``
    (wrapped into the seed range), so the choices differ and each stays reproducible."""
    if index == 0 or params.seed is None:
        return params
    seed = params.seed + index
    if seed >= _SEED_SPAN:
        seed -= _SEED_SPAN
    return msgspec.structs.replace(params, seed=seed)


# ------------------------------------------------------------------------ completions
def completion_prompts(request: completion_types.CompletionRequest, tokenizer: Any,
                       vocab_size: int) -> list[tuple[list[int], str]]:
    """Each prompt of a Completions request as (token ids, its text for ``echo``)."""
    prompt = request.prompt

    def tokens(ids: list, param: str) -> tuple[list[int], str]:
        if not ids:
            raise invalid(f"'{param}' must not be empty.", param, "empty_array")
        for token in ids:
            if type(token) is not int or not 0 <= token < vocab_size:
                raise invalid(f"'{param}' holds {token!r}, which is not a token ID of this "
                              f"model (0..{vocab_size - 1}).", param)
        return list(ids), tokenizer.decode(ids)

    def text(value: str, param: str) -> tuple[list[int], str]:
        ids = list(tokenizer.encode(value))
        if not ids:
            raise invalid(f"'{param}' must not be empty.", param, "empty_string")
        return ids, value

    if isinstance(prompt, str):
        return [text(prompt, "prompt")]
    if not isinstance(prompt, list) or not prompt:
        what = "must not be empty" if prompt == [] else "must be a string, a list of strings, " \
            "a list of token IDs or a list of lists of token IDs"
        raise invalid(f"'prompt' {what}.", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return [text(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    if all(isinstance(p, list) for p in prompt):
        return [tokens(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    if any(isinstance(p, str | list) for p in prompt):
        raise invalid("'prompt' mixes strings, token IDs and lists; send one kind.", "prompt")
    return [tokens(prompt, "prompt")]


def completion_sampling(request: completion_types.CompletionRequest,
                        vocab_size: int | None = None) -> SamplingParams:
    return _sampling(
        max_tokens=("max_tokens", request.max_output_tokens), logprobs_param="logprobs",
        temperature=request.temperature, top_p=request.top_p, seed=request.seed,
        stop=request.stop_list, logprobs=request.logprobs,
        frequency_penalty=request.frequency_penalty, presence_penalty=request.presence_penalty,
        top_k=request.top_k, min_p=request.min_p, repetition_penalty=request.repetition_penalty,
        logit_bias=_logit_bias(request.logit_bias), ignore_eos=request.ignore_eos,
        vocab_size=vocab_size, **_speculative(request.speculative))


# ------------------------------------------------------------------------- responses
def response_messages(request: resp_types.ResponseCreateRequest,
                      with_instructions: bool) -> list[dict[str, Any]]:
    """The request's input items as chat messages (function calls grouped per turn)."""
    messages: list[dict[str, Any]] = []
    if with_instructions and request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    for i, item in enumerate(request.input_items):
        if isinstance(item, resp_types.InputMessage):
            messages.append({"role": item.role,
                             "content": text_of(item.content, f"input[{i}].content")})
        elif isinstance(item, resp_types.FunctionCall):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, resp_types.FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": text_of(item.output, f"input[{i}].output")})
        else:  # pragma: no cover - the decoder only admits the types above
            raise invalid(f"input[{i}] has an unsupported type", f"input[{i}]")
    return messages


def response_tools(request: resp_types.ResponseCreateRequest) -> list[dict[str, Any]]:
    return [_tool_spec(t.name, t.description, t.parameters) for t in request.tools]


def response_sampling(request: resp_types.ResponseCreateRequest) -> SamplingParams:
    return _sampling(max_tokens=("max_output_tokens", request.max_output_tokens),
                     temperature=request.temperature, top_p=request.top_p,
                     logprobs=(request.top_logprobs or 0) if request.wants_logprobs else None,
                     ignore_eos=request.ignore_eos,
                     **_speculative(request.speculative))


# ----------------------------------------------------------------------------- shared
def _speculative(options: SpeculativeOptions | None) -> dict[str, Any]:
    return options.sampling_fields() if options is not None else {}


def _sampling(max_tokens: tuple[str, int | None], vocab_size: int | None = None,
              logprobs_param: str = "top_logprobs", **fields: Any) -> SamplingParams:
    max_param, max_value = max_tokens
    kwargs = {k: v for k, v in fields.items() if v is not None}
    try:
        params = SamplingParams(max_tokens=max_value, **kwargs)
        params.validate(vocab_size)
    except InvalidRequestError as exc:
        # The engine's field names, spelled as the wire protocol spells them.
        renames = {"max_tokens": max_param, "logprobs": logprobs_param, **WIRE_NAMES}
        param = renames.get(exc.param, exc.param)
        message = exc.message.replace(exc.param or "", param or "", 1)
        raise invalid(message, param) from None
    return params


def check_fits(state: ServerState, prompt_ids: list[int], params: SamplingParams,
               prompt_param: str, max_param: str) -> None:
    """Refuse, before the engine sees it, a prompt that cannot fit the context window."""
    limit = state.ready.max_model_len
    if len(prompt_ids) >= limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens, but the "
                       f"prompt has {len(prompt_ids)} tokens.", "invalid_request_error",
                       prompt_param, "context_length_exceeded")
    if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens; the "
                       f"prompt has {len(prompt_ids)} tokens and {max_param} asks for "
                       f"{params.max_tokens} more.", "invalid_request_error", max_param,
                       "context_length_exceeded")

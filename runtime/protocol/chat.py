"""Chat Completions wire types: the request we accept and the objects and chunks we send back.

Field names and shapes follow the ``openai`` package's ``openai.types.chat`` models.
Request structs ignore unknown fields (clients send extras we do not use).
Response structs encode every field OpenAI always sends, ``null`` included; fields typed with
``UnsetType`` are left out unless set, the way OpenAI leaves them out.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import UNSET, Struct, UnsetType, field

from runtime.protocol.errors import invalid
from runtime.protocol.extensions import SpeculativeOptions

MAX_CHOICES = 128  # OpenAI's limit on ``n``

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


# ---------------------------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------------------------


class TextPart(Struct, tag_field="type", tag="text"):
    """``{"type": "text", "text": ...}``; the only content part a text-only model takes."""

    text: str


Content = str | list[TextPart]


class FunctionCall(Struct):
    name: str
    arguments: str  # JSON text, exactly as the model produced it (may be invalid JSON)


class ToolCall(Struct, tag_field="type", tag="function"):
    """One function call of an assistant message, in requests (history) and responses."""

    id: str  # "call_..."
    function: FunctionCall


class SystemMessage(Struct, tag_field="role", tag="system", kw_only=True):
    content: Content
    name: str | None = None


class DeveloperMessage(Struct, tag_field="role", tag="developer", kw_only=True):
    content: Content
    name: str | None = None


class UserMessage(Struct, tag_field="role", tag="user", kw_only=True):
    content: Content
    name: str | None = None


class AssistantMessage(Struct, tag_field="role", tag="assistant", kw_only=True):
    content: Content | None = None  # None when the turn was only tool calls
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    name: str | None = None


class ToolMessage(Struct, tag_field="role", tag="tool", kw_only=True):
    content: Content
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDefinition(Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema of the arguments object
    strict: bool | None = None  # True: arguments are constrained to ``parameters`` exactly


class Tool(Struct, tag_field="type", tag="function"):
    function: FunctionDefinition


class NamedFunction(Struct):
    name: str


class NamedToolChoice(Struct, tag_field="type", tag="function"):
    """``{"type": "function", "function": {"name": ...}}``: the model must call this tool."""

    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class JSONSchemaSpec(Struct, kw_only=True):
    name: str
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormatText(Struct, tag_field="type", tag="text"):
    pass


class ResponseFormatJSONObject(Struct, tag_field="type", tag="json_object"):
    pass


class ResponseFormatJSONSchema(Struct, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaSpec


ResponseFormat = ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema


class StreamOptions(Struct, kw_only=True):
    include_usage: bool | None = None  # True: one last chunk with ``usage`` and no choices


class StreamedTextRequest(Struct, kw_only=True):
    """What Chat Completions and Completions requests share: streaming and stop strings."""

    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(StreamedTextRequest, kw_only=True):
    """``POST /v1/chat/completions``. Sampling ranges are checked by the engine, not here."""

    model: str | None = None  # None: the served model
    messages: list[Message]
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None  # None: "auto" when tools are given, else "none"
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    max_tokens: int | None = None  # legacy spelling of max_completion_tokens
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None  # alternatives per token, 0..20; needs logprobs=True
    n: int | None = None  # choices to generate, 1..MAX_CHOICES (each its own engine request)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    user: str | None = None
    # Extensions beyond OpenAI (vLLM/SGLang spellings).
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    speculative: SpeculativeOptions | None = None  # agentspeed's (runtime.protocol.extensions)

    def __post_init__(self) -> None:
        # APIError is not a ValueError, so msgspec lets it through decode unchanged.
        if self.n is not None and not 1 <= self.n <= MAX_CHOICES:
            raise invalid(f"n must be between 1 and {MAX_CHOICES}, got {self.n}.", "n")
        if not self.messages:
            raise invalid("'messages' must contain at least one message.", "messages",
                          "empty_array")

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens



# ---------------------------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------------------------


class TopLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None  # UTF-8 bytes of the token; None when it has no byte form


class TokenLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]  # most likely first; [] when top_logprobs=0


class ChoiceLogprobs(Struct, kw_only=True):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatCompletionMessage(Struct, tag_field="role", tag="assistant", kw_only=True):
    content: str | None  # None when the turn is only tool calls
    refusal: str | None = None
    tool_calls: list[ToolCall] | UnsetType = UNSET
    annotations: list[Any] = field(default_factory=list)  # always [] (no url citations)


class Choice(Struct, kw_only=True):
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class PromptTokensDetails(Struct, kw_only=True):
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


class CompletionTokensDetails(Struct, kw_only=True):
    reasoning_tokens: int = 0


class Usage(Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = field(
        default_factory=CompletionTokensDetails)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
        assert 0 <= cached_tokens <= prompt_tokens, "cached tokens are part of the prompt"
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


class ChatCompletion(Struct, tag_field="object", tag="chat.completion", kw_only=True):
    id: str  # "chatcmpl-..."
    created: int  # unix seconds
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaFunction(Struct, kw_only=True, omit_defaults=True):
    name: str | None = None  # first delta of a call only
    arguments: str | None = None  # the next piece of the arguments JSON text


class DeltaToolCall(Struct, kw_only=True, omit_defaults=True):
    """A piece of tool call number ``index``: id, type and name come once, then arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


class ChoiceDelta(Struct, kw_only=True, omit_defaults=True):
    """What changed since the previous chunk; absent fields did not change."""

    role: Literal["assistant"] | None = None  # first chunk only
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(Struct, kw_only=True):
    index: int
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None  # set on the choice's last chunk
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Struct, tag_field="object", tag="chat.completion.chunk", kw_only=True):
    id: str  # same for every chunk of one completion
    created: int
    model: str
    choices: list[ChunkChoice]  # [] on the usage-only last chunk
    system_fingerprint: str | None = None
    # With stream_options.include_usage: null on every chunk but the last (OpenAI's shape);
    # without it: absent.
    usage: Usage | None | UnsetType = UNSET


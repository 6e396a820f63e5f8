"""Responses API wire types: the request (HTTP body or WebSocket ``response.create``), the items
it carries, and the ``Response`` object we send back. Streaming events live in
``response_events.py``.

Shapes follow the ``openai`` package's ``openai.types.responses`` models. Request structs ignore
unknown fields; the ``Response`` object encodes every field, ``null`` included, as OpenAI does.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct, field

from runtime.protocol.errors import invalid
from runtime.protocol.extensions import SpeculativeOptions

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]


# ---------------------------------------------------------------------------------------------
# Content parts and items (shared by input and output)
# ---------------------------------------------------------------------------------------------


class InputText(Struct, tag_field="type", tag="input_text"):
    text: str


class LogprobAlternative(Struct, kw_only=True):
    token: str
    bytes: list[int]  # UTF-8 bytes of the token
    logprob: float


class Logprob(Struct, kw_only=True):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[LogprobAlternative] = field(default_factory=list)  # most likely first


class OutputText(Struct, tag_field="type", tag="output_text", kw_only=True):
    """Assistant text; as input it is history the client sends back (extra fields ignored)."""

    text: str
    annotations: list[Any] = field(default_factory=list)  # always [] from us
    logprobs: list[Logprob] = field(default_factory=list)


class Refusal(Struct, tag_field="type", tag="refusal"):
    refusal: str


class InputMessage(Struct, tag_field="type", tag="message", kw_only=True):
    """A message in ``input``; on the wire its ``"type": "message"`` may be left out."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText | OutputText | Refusal]
    id: str | None = None  # set when the client echoes one of our output messages
    status: ItemStatus | None = None


class FunctionCall(Struct, tag_field="type", tag="function_call", kw_only=True):
    """A call the model made: in ``output`` (with ``id``, ``status``), and echoed back in input."""

    call_id: str  # "call_..."; the matching function_call_output quotes it
    name: str
    arguments: str  # JSON text exactly as generated
    id: str | None = None  # "fc_..."
    status: ItemStatus | None = None


class FunctionCallOutput(Struct, tag_field="type", tag="function_call_output", kw_only=True):
    """The client's result for the call ``call_id``."""

    call_id: str
    output: str | list[InputText]
    id: str | None = None
    status: ItemStatus | None = None


InputItem = InputMessage | FunctionCall | FunctionCallOutput


class OutputMessage(Struct, tag_field="type", tag="message", kw_only=True):
    id: str  # "msg_..."
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText | Refusal] = field(default_factory=list)


OutputItem = OutputMessage | FunctionCall


# ---------------------------------------------------------------------------------------------
# Tools and text format (request fields echoed in the Response)
# ---------------------------------------------------------------------------------------------


class FunctionTool(Struct, tag_field="type", tag="function", kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema of the arguments object
    strict: bool | None = None  # True: arguments are constrained to ``parameters`` exactly


class ToolChoiceFunction(Struct, tag_field="type", tag="function"):
    """``{"type": "function", "name": ...}``: the model must call this tool."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | ToolChoiceFunction


class FormatText(Struct, tag_field="type", tag="text"):
    pass


class FormatJSONObject(Struct, tag_field="type", tag="json_object"):
    pass


class FormatJSONSchema(Struct, tag_field="type", tag="json_schema", kw_only=True):
    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


TextFormat = FormatText | FormatJSONObject | FormatJSONSchema


class TextConfig(Struct, kw_only=True):
    format: TextFormat = field(default_factory=FormatText)


# ---------------------------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------------------------


LOGPROBS_INCLUDE = "message.output_text.logprobs"


class ResponseCreateRequest(Struct, kw_only=True):
    """``POST /v1/responses`` body, and the body of a WebSocket ``response.create`` event.

    ``None`` for ``store``, ``generate``, ``stream`` and ``parallel_tool_calls`` (clients may send
    explicit nulls) is replaced by the default after decoding, so those are always bool.
    """

    model: str | None = None  # None: the served model
    instructions: str | None = None  # a system message, not inherited by continuations
    input: str | list[InputItem] | None = None  # str: one user message
    tools: list[FunctionTool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None  # None: "auto"
    parallel_tool_calls: bool | None = True
    previous_response_id: str | None = None  # continue this response's session
    store: bool | None = True
    stream: bool | None = False  # ignored over WebSocket, where every response streams
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    include: list[str] | None = None  # "message.output_text.logprobs": report token logprobs
    text: TextConfig | None = None  # None: plain text
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Extension (not in OpenAI's API), as in chat completions: generate through end-of-sequence
    # tokens until max_output_tokens (benchmarks need fixed output lengths).
    ignore_eos: bool | None = None
    speculative: SpeculativeOptions | None = None  # agentspeed's (runtime.protocol.extensions)
    # Not served, and refused rather than ignored: either would silently drop context (a
    # stored conversation, a stored prompt template).
    conversation: Any = None
    prompt: Any = None
    # WebSocket mode only.
    generate: bool | None = True  # False: prefill and pin instructions + tools, no output
    stream_id: str | None = None  # the lane; responses on one lane run one at a time, FIFO

    def __post_init__(self) -> None:
        for name, what in (("conversation", "Conversations (use previous_response_id)"),
                           ("prompt", "Stored prompt templates")):
            if getattr(self, name) is not None:
                raise invalid(f"{what} are not supported by this server.", name,
                              "unsupported_value")
        if self.store is None:
            self.store = True
        if self.generate is None:
            self.generate = True
        if self.stream is None:
            self.stream = False
        if self.parallel_tool_calls is None:
            self.parallel_tool_calls = True

    @staticmethod
    def prepare_wire(obj: Any) -> Any:
        """Tag input messages sent without ``type`` (``{"role": ..., "content": ...}``)."""
        items = obj.get("input") if isinstance(obj, dict) else None
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict) and "type" not in item and "role" in item:
                    item["type"] = "message"
        return obj

    @property
    def wants_logprobs(self) -> bool:
        """Token logprobs go into the output text (and its delta events) when ``include``
        asks for them, or when ``top_logprobs`` is set (a client that sets it wants them)."""
        return self.top_logprobs is not None or LOGPROBS_INCLUDE in (self.include or [])

    @property
    def input_items(self) -> list[InputItem]:
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [InputMessage(role="user", content=self.input)]
        return self.input


# ---------------------------------------------------------------------------------------------
# The Response object
# ---------------------------------------------------------------------------------------------


class InputTokensDetails(Struct, kw_only=True):
    cached_tokens: int = 0  # input tokens served from the prefix cache
    cache_write_tokens: int = 0  # not billed separately by us; always 0


class OutputTokensDetails(Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> ResponseUsage:
        assert 0 <= cached_tokens <= input_tokens, "cached tokens are part of the input"
        return cls(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
            output_tokens=output_tokens,
            output_tokens_details=OutputTokensDetails(),
            total_tokens=input_tokens + output_tokens,
        )


class ResponseError(Struct, kw_only=True):
    """Why a response ``failed``; the openai client accepts only its own codes here."""

    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    message: str


class IncompleteDetails(Struct, kw_only=True):
    reason: Literal["max_output_tokens", "content_filter"]


class Response(Struct, tag_field="object", tag="response", kw_only=True):
    id: str  # "resp_..."; unguessable, owned by one API key
    created_at: int  # unix seconds
    status: ResponseStatus
    model: str
    output: list[OutputItem] = field(default_factory=list)
    usage: ResponseUsage | None = None  # None until the response ends
    error: ResponseError | None = None  # set iff status == "failed"
    incomplete_details: IncompleteDetails | None = None  # set iff status == "incomplete"
    completed_at: int | None = None
    # Echoes of the request.
    instructions: str | None = None
    tools: list[FunctionTool] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: TextConfig = field(default_factory=TextConfig)
    store: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    background: bool = False
    truncation: Literal["disabled"] = "disabled"

    @classmethod
    def start(cls, request: ResponseCreateRequest, *, response_id: str, model: str,
              created_at: int) -> Response:
        """An ``in_progress`` response echoing ``request``, with no output yet."""
        return cls(
            id=response_id,
            created_at=created_at,
            status="in_progress",
            model=model,
            instructions=request.instructions,
            tools=request.tools,
            tool_choice=request.tool_choice or "auto",
            parallel_tool_calls=bool(request.parallel_tool_calls),
            previous_response_id=request.previous_response_id,
            max_output_tokens=request.max_output_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            text=request.text or TextConfig(),
            store=bool(request.store),
            metadata=request.metadata or {},
            user=request.user,
        )


class ResponseDeleted(Struct, tag_field="object", tag="response", kw_only=True):
    """``DELETE /v1/responses/{id}``'s reply (OpenAI's shape)."""

    id: str  # the deleted response's id
    deleted: bool = True

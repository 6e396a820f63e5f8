"""Wire types of the server's own routes: ``GET /v1/models``, ``GET /health`` and the
``/tokenize`` / ``/detokenize`` utilities.

``ModelList`` has the shape of OpenAI's model list (``openai.types.Model`` items in a ``list``
object); ``max_model_len`` is an extension (vLLM's spelling) that clients ignore.
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from runtime.protocol.chat import Message, Tool
from runtime.protocol.errors import invalid


class Model(Struct, tag_field="object", tag="model", kw_only=True):
    id: str  # the served model name; what requests pass as ``model``
    created: int  # unix seconds
    owned_by: str = "agentspeed"
    max_model_len: int  # context window in tokens (prompt + output)


class ModelList(Struct, tag_field="object", tag="list", kw_only=True):
    data: list[Model]


class Health(Struct, kw_only=True):
    """``/health``: 200 with ``ok`` while the engine runs, 503 with ``engine_dead`` after."""

    status: Literal["ok", "engine_dead"]


class TokenizeRequest(Struct, kw_only=True):
    """``POST /tokenize`` (vLLM's route and shapes): ``prompt`` as text, or ``messages`` (and
    ``tools``) rendered exactly as a chat completion would prefill them."""

    model: str | None = None
    prompt: str | None = None
    add_special_tokens: bool = True  # with ``prompt``: the tokenizer's BOS and the like
    messages: list[Message] | None = None
    tools: list[Tool] | None = None
    return_token_strs: bool = False

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise invalid("Send either 'prompt' or 'messages'.",
                          "prompt" if self.prompt is None else "messages")
        if self.messages is not None and not self.messages:
            raise invalid("'messages' must contain at least one message.", "messages",
                          "empty_array")


class TokenizeResponse(Struct, kw_only=True):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(Struct, kw_only=True):
    """``POST /detokenize``: token IDs back to text (special tokens kept)."""

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(Struct, kw_only=True):
    prompt: str

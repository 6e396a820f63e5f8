"""Completions (legacy text) wire types: ``POST /v1/completions`` and what it sends back.

Field names and shapes follow the ``openai`` package's ``openai.types.Completion`` and
``completion_create_params``. Request structs ignore unknown fields.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import UNSET, Struct, UnsetType

from runtime.protocol.chat import MAX_CHOICES, StreamedTextRequest, Usage
from runtime.protocol.errors import invalid
from runtime.protocol.extensions import SpeculativeOptions

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint when max_tokens is left out


class CompletionRequest(StreamedTextRequest, kw_only=True):
    """``POST /v1/completions``. ``prompt`` is a string, a list of strings, a list of token ids
    or a list of such lists (checked against the tokenizer by the handler, not here)."""

    model: str | None = None  # None: the served model
    prompt: Any
    suffix: str | None = None  # not served (no fill-in-the-middle): must be absent or ""
    max_tokens: int | None | UnsetType = UNSET  # unset: 16; null: until EOS or the window ends
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None  # choices per prompt, 1..MAX_CHOICES
    best_of: int | None = None  # only best_of == n (no server-side ranking)
    logprobs: int | None = None  # alternatives per token, 0..20
    echo: bool | None = False  # the prompt text before the completion text
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Extensions beyond OpenAI (vLLM/SGLang spellings), as in chat completions.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    speculative: SpeculativeOptions | None = None

    def __post_init__(self) -> None:
        n = self.n if self.n is not None else 1
        if not 1 <= n <= MAX_CHOICES:
            raise invalid(f"n must be between 1 and {MAX_CHOICES}, got {n}.", "n")
        if self.best_of is not None and self.best_of != n:
            raise invalid(f"best_of must equal n on this server (it ranks no candidates), got "
                          f"best_of={self.best_of} and n={n}.", "best_of", "unsupported_value")
        if self.suffix:
            raise invalid("suffix (fill-in-the-middle) is not supported by this server.",
                          "suffix", "unsupported_value")
        if self.echo and self.logprobs is not None:
            raise invalid("echo with logprobs would need the prompt's log-probabilities, which "
                          "this server does not compute.", "echo", "unsupported_value")

    @property
    def num_choices(self) -> int:
        return self.n if self.n is not None else 1

    @property
    def max_output_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS if self.max_tokens is UNSET else self.max_tokens



class CompletionLogprobs(Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]  # per token: the alternatives and the sampled token
    text_offset: list[int]  # where each token starts in the choice's text (echo included)


class CompletionChoice(Struct, kw_only=True):
    index: int  # prompt number * n + choice number
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None  # None until a stream's last chunk


class Completion(Struct, tag_field="object", tag="text_completion", kw_only=True):
    """A whole completion, and each streamed chunk (the same object with one choice's delta)."""

    id: str  # "cmpl-..."
    created: int
    model: str
    choices: list[CompletionChoice]  # [] on a stream's usage-only last chunk
    system_fingerprint: str | None = None
    # JSON answers always carry usage; streamed chunks only with include_usage (null but last).
    usage: Usage | None | UnsetType = UNSET

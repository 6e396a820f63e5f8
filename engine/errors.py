"""Errors the engine raises to its callers; the server maps them to OpenAI-shaped responses."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request the engine refuses before it touches any state; ``param`` names the culprit."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or "invalid_value"


class ContextLengthError(InvalidRequestError):
    """The prompt (plus the requested output) does not fit the model's context window.

    ``param`` is the engine's name ("prompt" or "max_tokens"); the server checks the length
    itself first (``runtime.convert.check_fits``) and names its own fields ("messages", "input",
    "max_output_tokens").
    """

    def __init__(self, message: str, param: str = "prompt") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")

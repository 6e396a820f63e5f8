"""OpenAI-shaped API errors, and the mapping from msgspec decode failures onto them.

Every failure a client can cause ends as an ``APIError``; the HTTP layer sends ``error_body(err)``
with ``err.status``, the WebSocket layer wraps the same fields in an ``error`` event.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "server_error",
]


class APIError(Exception):
    """An error reported to the client as ``{"error": {message, type, param, code}}``.

    ``status`` is the HTTP status; ``param`` names the offending request field in OpenAI's
    dotted/indexed form (``messages[0].role``), or is None when no single field is to blame.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: ErrorType = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def __repr__(self) -> str:
        return (
            f"APIError(status={self.status}, type={self.type!r}, param={self.param!r}, "
            f"code={self.code!r}, message={self.message!r})"
        )


def error_body(err: APIError) -> dict[str, Any]:
    """The JSON body OpenAI sends with an error status; all four keys are always present."""
    return {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    }


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or asks for something this server cannot do."""
    return APIError(400, message, "invalid_request_error", param, code)


def authentication(message: str = "Invalid or missing API key.") -> APIError:
    """401: no key, or a key this server does not know."""
    return APIError(401, message, "authentication_error", None, "invalid_api_key")


def permission_denied(message: str, param: str | None = None) -> APIError:
    """403: a known key asking for something it does not own (another tenant's response)."""
    return APIError(403, message, "permission_error", param, None)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """404: an unknown model, response id or route."""
    return APIError(404, message, "not_found_error", param, code)


def previous_response_not_found(response_id: str) -> APIError:
    """400 (as OpenAI sends it): the chain to continue is unknown, expired or someone else's."""
    return invalid(f"Previous response with id '{response_id}' not found.",
                   "previous_response_id", "previous_response_not_found")


def rate_limited(message: str, code: str | None = "rate_limit_exceeded") -> APIError:
    """429: over a per-key limit or the server's admission limit; the client should retry."""
    return APIError(429, message, "rate_limit_error", None, code)


def server_error(
    message: str = "The server had an error while processing your request.",
    code: str | None = "server_error",
) -> APIError:
    """500: our fault; the message must not leak internals."""
    return APIError(500, message, "server_error", None, code)


# msgspec appends the location of a validation failure as " - at `$.a.b[0].c`".
_AT_PATH = re.compile(r"^(?P<detail>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_WRONG_TYPE = re.compile(r"^Expected `[^`]+`, got `[^`]+`$")


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def from_msgspec_error(exc: msgspec.MsgspecError) -> APIError:
    """Turn a ``msgspec`` decode/validation failure into a 400 naming the offending parameter.

    ``$.messages[0].role`` becomes ``param="messages[0].role"``; a missing field is named by its
    own path (``messages[0].content``), the way OpenAI reports ``missing_required_parameter``.
    """
    if not isinstance(exc, msgspec.ValidationError):
        return invalid(
            f"We could not parse the JSON body of your request ({exc}). "
            "The body must be a valid JSON object.",
            code="invalid_json",
        )
    match = _AT_PATH.match(str(exc))
    assert match is not None, "the pattern matches any string"
    detail = match["detail"]
    path = (match["path"] or "").lstrip(".")
    missing = _MISSING_FIELD.match(detail)
    if missing:
        param = _join(path, missing["field"])
        return invalid(f"Missing required parameter: '{param}'.", param,
                       "missing_required_parameter")
    code = "invalid_type" if _WRONG_TYPE.match(detail) else "invalid_value"
    if not path:  # the body itself, e.g. a JSON array instead of an object
        return invalid(f"Invalid request body: {detail}.", None, code)
    return invalid(f"Invalid '{path}': {detail}.", path, code)

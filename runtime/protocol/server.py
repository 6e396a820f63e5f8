"""Wire types of the server's own routes: ``GET /v1/models`` and ``GET /health``.

``ModelList`` has the shape of OpenAI's model list (``openai.types.Model`` items in a ``list``
object); ``max_model_len`` is an extension (vLLM's spelling) that clients ignore.
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct


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

"""Test helpers around the real ``openai`` client: a client on a fake transport, and a check that
the client's pydantic models know and keep every field we send."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
from pydantic import BaseModel


def assert_client_keeps(model: BaseModel, encoded: bytes, extras: frozenset[str] = frozenset()
                        ) -> None:
    """The client parsed ``encoded`` into ``model`` knowing every field and keeping every value.

    ``extras`` names fields we send on purpose although the client's models lack them.
    """

    def no_extras(value: Any, where: str) -> None:
        if isinstance(value, BaseModel):
            unknown = set(value.__pydantic_extra__ or ()) - extras
            assert not unknown, f"unknown to the client at {where}: {sorted(unknown)}"
            for name in type(value).model_fields:
                no_extras(getattr(value, name), f"{where}.{name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                no_extras(item, f"{where}[{i}]")

    no_extras(model, "$")
    assert model.model_dump(mode="json", exclude_unset=True, by_alias=True) == json.loads(encoded)


def fake_client(reply: bytes, content_type: str = "application/json") -> tuple[openai.OpenAI,
                                                                              list[bytes]]:
    """An openai client whose every request is captured and answered with ``reply``."""
    seen: list[bytes] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.read())
        return httpx2.Response(200, content=reply, headers={"content-type": content_type})

    client = openai.OpenAI(api_key="sk-test", base_url="http://agentspeed.test/v1",
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handle)),
                           _strict_response_validation=True, max_retries=0)
    return client, seen

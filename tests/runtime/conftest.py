"""One shared ``agentspeed serve`` subprocess (with an API key) for the server tests."""

from __future__ import annotations

import openai
import pytest

from tests.runtime.server import ServerProcess

API_KEY = "sk-test-owner"
MAX_CONNECTIONS = 8
MAX_CONCURRENT = 4  # generations in flight; only the 429 test runs more at once


@pytest.fixture(scope="session")
def server(default_model_path):
    proc = ServerProcess("--num-pages", "1024", "--max-model-len", "4096",
                         "--max-connections", str(MAX_CONNECTIONS),
                         "--max-concurrent-requests", str(MAX_CONCURRENT),
                         api_keys=(API_KEY, "sk-test-other")).wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=server.base_url + "/v1", max_retries=0,
                         timeout=120)

"""The scripts in ``examples/``, run as users run them (subprocesses), against the test server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.conftest import API_KEY
from tests.runtime.server import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ARITHMETIC = re.compile(r"[\d\s+\-*/%().]+")


def run_example(name: str, base_url: str, *args: str,
                timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--base-url", base_url, "--api-key", API_KEY,
         *args], capture_output=True, text=True, timeout=timeout_s, env=env)


def python_value(expression: str) -> int | float | None:
    """What Python makes of a plain arithmetic expression; None where the tool must refuse."""
    if not ARITHMETIC.fullmatch(expression) or "**" in expression:
        return None  # not plain arithmetic (or a power, which could be huge): not judged here
    try:
        return eval(expression)  # digits, operators and parentheses only
    except (SyntaxError, ZeroDivisionError):
        return None


def usage_lines(stdout: str) -> list[dict[str, int]]:
    """Every ``[usage] ... key=value ...`` line printed, as a dict."""
    return [{k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            for line in stdout.splitlines() if line.startswith("[usage]")]


def test_chat_example_streams_a_multi_turn_conversation(server):
    out = run_example("chat.py", server.base_url + "/v1", "Name a colour.", "Name another one.")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("user> ") == 2 and out.stdout.count("assistant> ") == 2
    first, second = usage_lines(out.stdout)
    assert first["completion_tokens"] > 0 and second["completion_tokens"] > 0
    # Turn 2 resends turn 1, whose prompt is still in the prefix cache.
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"]
    assert second["cached_tokens"] >= first["prompt_tokens"] - 16


def test_ws_agent_loop_example_runs_its_tool(server):
    """Waits on constrained decoding: turn 1 forces the call with a named ``tool_choice``."""
    out = run_example("ws_agent_loop.py", server.base_url + "/v1", "What is 17 * 23?",
                      "--max-turns", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    calls = re.findall(r"^\[tool\] calculator\((.*)\) -> (.*)$", out.stdout, re.MULTILINE)
    assert calls, out.stdout
    arguments, result = json.loads(calls[0][0]), json.loads(calls[0][1])
    expression = arguments["expression"]
    expected = python_value(expression)
    # The printed result is what Python computes for the model's expression.
    if expected is not None:
        assert result == {"expression": expression, "result": expected}
    elif ARITHMETIC.fullmatch(expression) and "**" not in expression:
        assert "error" in result
    assert "final answer> " in out.stdout
    turn1, turn2 = usage_lines(out.stdout)[:2]
    assert turn2["cached_tokens"] >= turn1["input_tokens"] + turn1["output_tokens"] - 16


def test_agents_sdk_example_runs_its_tool(server):
    """Waits on constrained decoding: the first model call is forced onto the tool.

    ``--api responses`` here; ``test_agents_sdk.py`` covers the chat and WebSocket models.
    """
    out = run_example("agents_sdk.py", server.base_url + "/v1", "What is 17 * 23?",
                      "--api", "responses")
    assert out.returncode == 0, out.stdout + out.stderr
    calls = re.findall(r"^\[tool\] calculator\('(.*)'\) -> (.*)$", out.stdout, re.MULTILINE)
    assert calls, out.stdout
    expression, result = calls[0]
    expected = python_value(expression)
    if expected is not None:
        assert result == str(expected)
    final = re.search(r"^final answer> (.+)$", out.stdout, re.MULTILINE)
    assert final and final.group(1).strip(), out.stdout


@pytest.mark.parametrize("name", ["chat.py", "ws_agent_loop.py", "agents_sdk.py"])
def test_example_without_a_server_fails_clearly(name):
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    out = run_example(name, base_url, timeout_s=120)
    assert out.returncode == 1
    assert f"cannot reach an agentspeed server at {base_url}" in out.stderr
    assert "Traceback" not in out.stderr

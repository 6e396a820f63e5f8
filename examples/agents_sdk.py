"""An ``openai-agents`` Agent with one function tool, run to completion against agentspeed.

Start the server in one terminal, then run this in another:

    make serve                                   # or: agentspeed serve [--api-key KEY]
    python examples/agents_sdk.py
    python examples/agents_sdk.py "What is 1234 + 4321?" --api responses-ws

The agent's model is pointed at our server through ``AsyncOpenAI(base_url=...)``: Chat
Completions by default (``OpenAIChatCompletionsModel``), or the Responses API over HTTP
(``--api responses``) or over the WebSocket (``--api responses-ws``). Its first model call is
forced to use the ``calculator`` tool with ``ModelSettings(tool_choice=...)``; the SDK runs the
tool (really, here in Python), sends the result back and, since ``reset_tool_choice`` is on, lets
the model answer freely. Tracing is off: nothing is sent to OpenAI.

The server defaults to http://127.0.0.1:8000/v1; ``--base-url`` / ``--api-key`` override it, else
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` from the environment are used. Exits 1 with a message
when the server cannot be reached, refuses the key, or the forced tool call never happened.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import openai
from _common import (  # examples/ is the script's own directory
    add_server_args,
    evaluate,
    exit_if_unusable,
)
from agents import (
    Agent,
    MaxTurnsExceeded,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    OpenAIResponsesWSModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

MODELS = {"chat": OpenAIChatCompletionsModel, "responses": OpenAIResponsesModel,
          "responses-ws": OpenAIResponsesWSModel}
tool_calls: list[tuple[str, str]] = []  # (expression, result) of every call the agent made


@function_tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses.

    Args:
        expression: the expression, e.g. "17 * 23".
    """
    try:
        result = str(evaluate(expression))
    except ValueError as exc:
        result = f"error: {exc}"  # goes back to the model, which may try again
    tool_calls.append((expression, result))
    print(f"[tool] calculator({expression!r}) -> {result}", flush=True)
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is 17 * 23?")
    add_server_args(parser)
    parser.add_argument("--api", choices=sorted(MODELS), default="chat")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48, help="per model call")
    return parser.parse_args()


async def connect(args: argparse.Namespace) -> tuple[openai.AsyncOpenAI, str]:
    """A client and the model id, or exit 1 with a message when the server is not usable."""
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0,
                                timeout=120)
    with exit_if_unusable(args.base_url):
        models = [m.id async for m in client.models.list()]
    return client, args.model or models[0]


async def main() -> int:
    args = parse_args()
    set_tracing_disabled(True)
    client, model_id = await connect(args)
    agent = Agent(
        name="calculator agent",
        instructions="You are a careful assistant. Use the calculator tool for any arithmetic, "
                     "then answer with the number it returned.",
        tools=[calculator],
        model=MODELS[args.api](model=model_id, openai_client=client),
        model_settings=ModelSettings(tool_choice="calculator", max_tokens=args.max_tokens,
                                     temperature=0),
    )
    print(f"user> {args.question}")
    try:
        result = await Runner.run(agent, args.question, max_turns=args.max_turns)
    except MaxTurnsExceeded:
        sys.exit(f"error: no final answer within {args.max_turns} turns")
    finally:
        await client.close()
    if not tool_calls:
        sys.exit("error: the first model call was forced to use the calculator but made no "
                 "call (the server did not honour tool_choice)")
    print(f"final answer> {str(result.final_output).strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

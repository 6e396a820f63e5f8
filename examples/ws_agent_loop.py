"""An agent loop over the Responses WebSocket (``client.responses.connect()``) with a real tool.

Start the server in one terminal, then run this in another:

    make serve                                   # or: agentspeed serve [--api-key KEY]
    python examples/ws_agent_loop.py
    python examples/ws_agent_loop.py "What is (12 + 30) * 7?" --max-turns 3

One socket carries the whole session. Turn 1 sends the instructions, the ``calculator`` tool and
the question, and forces the call with a named ``tool_choice``. The tool is then really run here
in Python (arithmetic evaluated safely with ``ast``), and each later turn sends only the new
``function_call_output`` items with ``previous_response_id``: the server continues from the exact
tokens of the turn before, so ``cached_tokens`` covers nearly the whole prompt. The loop ends on
the first turn without a tool call; the last allowed turn (``--max-turns``) is sent with
``tool_choice: "none"`` so it answers in text.

The server defaults to http://127.0.0.1:8000/v1; ``--base-url`` / ``--api-key`` override it, else
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` from the environment are used. Exits 1 with a message
when the server cannot be reached, refuses the key, fails a turn or ignores the forced call.
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import add_server_args, connect, evaluate  # examples/ is the script's own directory

INSTRUCTIONS = ("You are a careful assistant. Use the calculator tool for any arithmetic, then "
                "answer with the number it returned.")
CALCULATOR = {
    "type": "function",
    "name": "calculator",
    "description": "Evaluate an arithmetic expression with + - * / // % ** and parentheses.",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. '17 * 23'"}},
        "required": ["expression"],
        "additionalProperties": False,
    },
    "strict": True,
}
def calculator(arguments: str) -> str:
    """Run the tool on the model's JSON arguments; errors go back to the model as JSON too."""
    try:
        expression = json.loads(arguments)["expression"]
        return json.dumps({"expression": expression, "result": evaluate(str(expression))})
    except (ValueError, KeyError, TypeError) as exc:
        return json.dumps({"error": f"{type(exc).__name__}: {exc}"})


def compact(arguments: str) -> str:
    """The arguments on one line (as written when they are not valid JSON)."""
    try:
        return json.dumps(json.loads(arguments))
    except ValueError:
        return arguments


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is 17 * 23?")
    add_server_args(parser)
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--max-output-tokens", type=int, default=64, help="per turn")
    return parser.parse_args()


def run_turn(conn, **create):
    """Send one ``response.create`` and stream its text; the final ``Response``."""
    conn.response.create(**create)
    for event in conn:
        if event.type == "error":
            sys.exit(f"error: the server refused the turn: {event.error.message}")
        if event.type == "response.output_text.delta":
            print(event.delta, end="", flush=True)
        elif event.type in ("response.completed", "response.incomplete", "response.failed"):
            if event.type == "response.failed":
                sys.exit(f"error: the turn failed: {event.response.error.message}")
            return event.response
    sys.exit("error: the server closed the WebSocket mid-turn")


def main() -> int:
    args = parse_args()
    client, model = connect(args)
    print(f"user> {args.question}")
    with client.responses.connect() as conn:
        create = {"model": model, "instructions": INSTRUCTIONS, "tools": [CALCULATOR],
                  "input": args.question, "tool_choice": {"type": "function", "name": "calculator"},
                  "max_output_tokens": args.max_output_tokens, "temperature": 0}
        for turn in range(1, args.max_turns + 1):
            print(f"--- turn {turn}")
            response = run_turn(conn, **create)
            usage = response.usage
            print(f"\n[usage] turn {turn}: input_tokens={usage.input_tokens} "
                  f"cached_tokens={usage.input_tokens_details.cached_tokens} "
                  f"output_tokens={usage.output_tokens}")
            calls = [item for item in response.output if item.type == "function_call"]
            if not calls:
                if turn == 1:
                    sys.exit("error: turn 1 forced a calculator call but the model made none "
                             "(the server did not honour tool_choice)")
                print(f"final answer> {response.output_text.strip()}")
                return 0
            outputs = []
            for call in calls:
                result = calculator(call.arguments)  # really executed, here
                print(f"[tool] {call.name}({compact(call.arguments)}) -> {result}")
                outputs.append({"type": "function_call_output", "call_id": call.call_id,
                                "output": result})
            last = turn + 1 == args.max_turns
            # Only the new items: the server holds everything before under response.id.
            create = {"model": model, "previous_response_id": response.id, "input": outputs,
                      "tool_choice": "none" if last else "auto",
                      "max_output_tokens": args.max_output_tokens, "temperature": 0}
    print(f"stopped after {args.max_turns} turns without a final answer")
    return 0


if __name__ == "__main__":
    sys.exit(main())

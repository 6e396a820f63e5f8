"""Streamed multi-turn chat against agentspeed with the official ``openai`` client.

Start the server in one terminal, then run this in another:

    make serve                                   # or: agentspeed serve [--api-key KEY]
    python examples/chat.py                      # a few built-in questions
    python examples/chat.py "Name a planet." "How far is it from the sun?"

Each argument is one user turn of the same conversation; replies stream as they are generated.
The server defaults to http://127.0.0.1:8000/v1; ``--base-url`` / ``--api-key`` override it, else
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` from the environment are used. Exits 1 with a message
when the server cannot be reached or refuses the key.
"""

from __future__ import annotations

import argparse
import sys

from _common import add_server_args, connect  # examples/ is the script's own directory

QUESTIONS = ("What is the capital of France?", "What is it famous for?",
             "Summarize our conversation in one sentence.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="*", help="user turns (default: a few built-in ones)")
    add_server_args(parser)
    parser.add_argument("--max-tokens", type=int, default=48, help="per reply (CPU: keep small)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    client, model = connect(args)
    messages = [{"role": "system", "content": "You are a helpful, concise assistant."}]
    for question in args.questions or QUESTIONS:
        messages.append({"role": "user", "content": question})
        print(f"user> {question}\nassistant> ", end="", flush=True)
        stream = client.chat.completions.create(
            model=model, messages=messages, max_tokens=args.max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True})
        reply, usage = [], None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                reply.append(chunk.choices[0].delta.content)
                print(chunk.choices[0].delta.content, end="", flush=True)
        messages.append({"role": "assistant", "content": "".join(reply)})
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        print(f"\n[usage] prompt_tokens={usage.prompt_tokens} cached_tokens={cached} "
              f"completion_tokens={usage.completion_tokens}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

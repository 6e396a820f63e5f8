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
import os
import sys

import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
QUESTIONS = ("What is the capital of France?", "What is it famous for?",
             "Summarize our conversation in one sentence.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="*", help="user turns (default: a few built-in ones)")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL))
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"),
                        help="any value works when the server runs without --api-key")
    parser.add_argument("--model", default=None, help="default: the first served model")
    parser.add_argument("--max-tokens", type=int, default=48, help="per reply (CPU: keep small)")
    return parser.parse_args()


def connect(args: argparse.Namespace) -> tuple[openai.OpenAI, str]:
    """A client and the model id, or exit 1 with a message when the server is not usable."""
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0,
                           timeout=120)
    try:
        models = [m.id for m in client.models.list()]
    except openai.APIConnectionError:
        sys.exit(f"error: cannot reach an agentspeed server at {args.base_url} "
                 "(start one with `make serve`, or pass --base-url)")
    except openai.AuthenticationError:
        sys.exit(f"error: {args.base_url} refused the API key (pass --api-key)")
    return client, args.model or models[0]


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

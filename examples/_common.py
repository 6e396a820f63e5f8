"""What the examples share: server flags, a clear exit when the server is unusable, and the safe
arithmetic behind their ``calculator`` tool. Not an example itself."""

from __future__ import annotations

import argparse
import ast
import contextlib
import operator
import os
import sys
from collections.abc import Iterator

import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
              ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL))
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"),
                        help="any value works when the server runs without --api-key")
    parser.add_argument("--model", default=None, help="default: the first served model")


@contextlib.contextmanager
def exit_if_unusable(base_url: str) -> Iterator[None]:
    """Exit 1 with a message when the server cannot be reached or refuses the key."""
    try:
        yield
    except openai.APIConnectionError:
        sys.exit(f"error: cannot reach an agentspeed server at {base_url} "
                 "(start one with `make serve`, or pass --base-url)")
    except openai.AuthenticationError:
        sys.exit(f"error: {base_url} refused the API key (pass --api-key)")


def connect(args: argparse.Namespace) -> tuple[openai.OpenAI, str]:
    """A client and the model id, or exit 1 with a message when the server is not usable."""
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0,
                           timeout=120)
    with exit_if_unusable(args.base_url):
        models = [m.id for m in client.models.list()]
    return client, args.model or models[0]


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; raises ``ValueError`` on anything else."""

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](left, right)
        raise ValueError(f"unsupported syntax: {type(node).__name__}")

    try:
        return value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ZeroDivisionError, OverflowError) as exc:
        raise ValueError(str(exc)) from None

"""The ``agentspeed`` command line: ``chat`` (interactive, streamed) and, later, ``serve``.

Defaults come from ``EngineConfig`` so the CLI and the library never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from engine.config import DRAFTERS, EngineConfig
from engine.parallel.launch import is_worker_process
from runtime.state import ServerConfig
from sessions.manager import STORE_TTL_LEASES

_ENGINE_FLAGS = ("model", "dtype", "device", "load_format", "page_size", "num_pages",
                 "max_model_len", "max_num_seqs", "max_num_batched_tokens", "prefill_first_tokens",
                 "prefill_first_max_share", "attention_backend", "seed", "speculative_drafter",
                 "num_speculative_tokens", "speculative_draft_layers", "kv_cache_memory_gb",
                 "gpu_memory_utilization", "pin_budget_fraction", "host_tier_gb",
                 "tensor_parallel_size", "graph_attention", "gemv", "pdl",
                 "tp_one_shot_all_reduce", "ahead_pacing")
_CHOICES = {"speculative_drafter": DRAFTERS,
            "graph_attention": ("auto", "flashinfer", "triton")}
_ALIASES = {"tensor_parallel_size": ("--tp",)}


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="WARNING")
    defaults = {f.name: f for f in dataclasses.fields(EngineConfig)}
    for name in _ENGINE_FLAGS:
        default = defaults[name].default
        if isinstance(default, bool):  # --gemv / --no-gemv
            parser.add_argument(f"--{name.replace('_', '-')}", default=default,
                                action=argparse.BooleanOptionalAction)
            continue
        # Numbers take their field's type; None-defaulted counts are ints; the rest strings.
        kind = type(default) if isinstance(default, int | float) else str
        if name in ("num_pages", "max_model_len"):
            kind = int
        parser.add_argument(f"--{name.replace('_', '-')}", *_ALIASES.get(name, ()), type=kind,
                            default=default, choices=_CHOICES.get(name),
                            help=f"(default: {default})")
    parser.add_argument("--no-prefix-caching", action="store_true")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    kwargs = {name: getattr(args, name) for name in _ENGINE_FLAGS}
    return EngineConfig(enable_prefix_caching=not args.no_prefix_caching, **kwargs)


def chat(args: argparse.Namespace) -> int:
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams

    config = engine_config_from_args(args)
    llm = LLM(**dataclasses.asdict(config))
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print("agentspeed chat — empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        reply = []
        for out in llm.stream(llm.apply_chat_template(messages), params):
            sys.stdout.write(out.delta_text)
            sys.stdout.flush()
            reply.append(out.delta_text)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    llm.shutdown()  # stops tensor-parallel workers, if any
    return 0


def server_config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(host=args.host, port=args.port, api_keys=tuple(args.api_key or ()),
                        served_model_name=args.served_model_name,
                        session_store=args.session_store,
                        salt_cache_per_key=args.salt_cache_per_key,
                        max_connections=args.max_connections, lease_s=args.session_lease_s,
                        max_concurrent_requests=args.max_concurrent_requests,
                        log_level=args.log_level.upper())


def raise_open_file_limit(max_connections: int) -> int:
    """Lift the soft open-file limit so ``max_connections`` WebSockets fit (each is a file
    descriptor; many systems start at 1024), as far as the hard limit allows; the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + 1024  # headroom: HTTP clients, the engine's sockets, files
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logging.getLogger(__name__).warning(
            "open-file limit %d (hard) is below the %d that --max-connections %d needs",
            target, needed, max_connections)
    return target


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from runtime.app import create_app

    config = server_config_from_args(args)
    raise_open_file_limit(config.max_connections)
    app = create_app(config, engine_config_from_args(args))
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level.lower(),
                ws_max_size=4 * config.max_body_bytes, timeout_graceful_shutdown=10)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentspeed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    chat_parser = sub.add_parser("chat", help="interactive chat with streamed tokens")
    add_engine_args(chat_parser)
    chat_parser.add_argument("--system", default=None, help="system prompt")
    chat_parser.add_argument("--temperature", type=float, default=0.7)
    chat_parser.add_argument("--max-tokens", type=int, default=512)
    serve_parser = sub.add_parser("serve", help="OpenAI-compatible HTTP + WebSocket server")
    add_engine_args(serve_parser)
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--api-key", action="append", default=None,
                              help="accepted bearer key (repeatable); none: no auth")
    serve_parser.add_argument("--served-model-name", default=None)
    serve_parser.add_argument(
        "--session-lease-s", type=float, default=ServerConfig.lease_s,
        help="how long a finished turn's KV stays pinned, renewed by every turn; stored "
             f"chains live {STORE_TTL_LEASES} leases after their last turn "
             f"(default: {ServerConfig.lease_s})")
    serve_parser.add_argument("--max-connections", type=int,
                              default=ServerConfig.max_connections, help="open WebSockets")
    serve_parser.add_argument("--max-concurrent-requests", type=int,
                              default=ServerConfig.max_concurrent_requests,
                              help="generations in flight; more get 429")
    serve_parser.add_argument("--salt-cache-per-key", action="store_true",
                              help="never share cached prefixes between API keys")
    serve_parser.add_argument(
        "--session-store", default=None, metavar="URL",
        help="sqlite:///ABS/PATH, redis://HOST:PORT/DB or memory:// "
             "(default: $AGENTSPEED_CACHE/sessions.sqlite3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    config = engine_config_from_args(args)
    if is_worker_process(config):  # torchrun-style launch: ranks > 0 only mirror rank 0
        from engine.parallel.worker import run_worker

        return run_worker(config)
    if args.command == "chat":
        return chat(args)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

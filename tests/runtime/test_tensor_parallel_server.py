"""``agentspeed serve --tp 2`` as users run it: same greedy answer as one rank; a dead rank
takes the server down with an error naming it (no hang)."""

from __future__ import annotations

import os
import signal
import subprocess

import openai
import pytest

from engine.default_model import eos_token_ids
from engine.llm import LLM
from engine.loader import load_config
from engine.sampling_params import SamplingParams
from engine.tokenizer import load_tokenizer
from tests.runtime.server import ServerProcess
from tools.render import ChatRenderer

MESSAGES = [{"role": "user", "content": "Say something."}]
MAX_TOKENS = 6


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def worker_pids(root: int) -> list[int]:
    """Processes below ``root`` running ``engine.parallel.worker``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"engine.parallel.worker" not in cmdline:
            continue
        pid = int(name)
        while pid not in (None, 0, 1, root):
            pid = _parent(pid)
        if pid == root:
            found.append(int(name))
    return found


def one_rank_text(path: str) -> str:
    tokenizer = load_tokenizer(path)
    prompt = ChatRenderer(tokenizer, eos_token_ids(load_config(path), path)[0]).render(MESSAGES)
    with LLM(path, dtype="float32", num_pages=64, max_model_len=512, device="cpu") as llm:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        return llm.generate(prompt, params)[0].text


def test_serve_tp2_answers_like_one_rank_and_dies_with_its_worker(tiny_qwen3_path):
    expected = one_rank_text(tiny_qwen3_path)
    server = ServerProcess("--model", tiny_qwen3_path, "--tp", "2", "--dtype", "float32",
                           "--device", "cpu", "--num-pages", "64", "--max-model-len", "512",
                           "--log-level", "info")
    try:
        server.wait_ready()
        client = openai.OpenAI(api_key="sk-none", base_url=server.base_url + "/v1",
                               max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="default", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0,
            extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == MAX_TOKENS
        assert reply.choices[0].message.content == expected
        workers = worker_pids(server.proc.pid)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still up 60 s after its worker died:\n{server.read_log()}")
        log = server.read_log()
        # The server's own last words name the rank and how it died.
        assert "engine is dead (tensor-parallel rank 1" in log, log
        assert "killed by SIGKILL" in log and "shutting the server down" in log, log
    finally:
        server.stop(signal.SIGKILL)

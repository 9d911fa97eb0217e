"""A fake OpenAI-compatible chat server on 127.0.0.1 for the prompt-refiner tests (in-process and in a real
ComfyUI), and the answer it gives by default."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REFINED = "A red panda pedals a small wooden bicycle along a snowy forest path, the camera tracking beside it."


def answer(content: str | None = REFINED, refusal: str | None = None, finish: str = "stop") -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}]}


class FakeServer:
    """Answers POST /v1/chat/completions from a script of (status, body, delay); records every request."""

    def __init__(self):
        self.script: list[tuple[int, dict, float]] = []
        self.default = (200, answer(), 0.0)
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, answer, delay = fake.script.pop(0) if fake.script else fake.default
                if callable(answer):
                    status, answer = answer(body)
                time.sleep(delay)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

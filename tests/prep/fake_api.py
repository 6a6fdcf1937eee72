"""An OpenAI-compatible chat server on 127.0.0.1 for the captioning tests, started and stopped by the test.

Each request is recorded (its JSON body, headers, arrival time); `behave(number, body)` decides the answer:
a caption, an HTTP error, a delay or a wait on an event. Every wait is bounded, so no test can hang on it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_WAIT = 20.0  # seconds any scripted delay may last


class Reply:
    def __init__(
        self,
        status: int = 200,
        caption: str | None = "A grey sea under a low sky.",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        wait_for: threading.Event | None = None,
    ) -> None:
        self.status, self.caption, self.headers = status, caption, headers or {}
        self.delay, self.wait_for = min(delay, MAX_WAIT), wait_for


class FakeChatServer:
    def __init__(self, behave: Callable[[int, dict[str, Any]], Reply] | None = None) -> None:
        self.behave = behave or (lambda number, body: Reply())
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    number = len(server.requests)
                    server.requests.append(
                        {
                            "path": self.path,
                            "body": body,
                            "time": time.monotonic(),
                            "auth": self.headers.get("Authorization"),
                        }
                    )
                reply = server.behave(number, body)
                if reply.wait_for is not None:
                    reply.wait_for.wait(MAX_WAIT)
                time.sleep(reply.delay)
                if reply.status == 200:
                    data = {
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.caption}}]
                    }
                else:
                    data = {"error": {"message": f"scripted {reply.status}"}}
                payload = json.dumps(data).encode()
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def prompts(self) -> list[str]:
        return [
            part["text"]
            for r in self.requests
            for part in r["body"]["messages"][0]["content"]
            if part["type"] == "text"
        ]

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

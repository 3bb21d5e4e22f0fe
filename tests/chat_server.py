"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for the agent tests.

Each request to `/v1/chat/completions` takes the next step of the script:

* a string: a 200 answer whose message content is that string;
* `Reply(status, body, headers, delay)`: any status and body (a dict is sent as JSON), after `delay` s.

Requests are recorded (path, headers, JSON body). When the script is used up the server answers 500,
and it serves at most `limit` requests in all, so a client loop cannot run away.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion(content: str | None, refusal: str | None = None) -> dict[str, Any]:
    """A chat.completion object with one choice."""
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@dataclass
class ScriptedServer:
    script: list[str | Reply]
    reject_formats: set[str] = field(default_factory=set)  # response_format types answered with 400
    limit: int = 50
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def next_reply(self, body: dict[str, Any]) -> Reply:
        fmt = (body.get("response_format") or {}).get("type")
        if fmt in self.reject_formats:
            return Reply(400, {"error": {"message": f"response_format {fmt} is not supported", "type": "invalid"}})
        if not self.script:
            return Reply(500, {"error": {"message": "script exhausted", "type": "server_error"}})
        step = self.script.pop(0)
        return Reply(200, completion(step)) if isinstance(step, str) else step


def _handler(server: ScriptedServer, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, reply: Reply) -> None:
            if reply.delay:
                time.sleep(reply.delay)
            body = reply.body
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(reply.status)
                content_type = "application/json" if not isinstance(body, bytes) else "text/plain"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def _record(self, body: Any) -> bool:
            with lock:
                if len(server.requests) >= server.limit:
                    return False
                server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "body": body})
                return True

        def do_GET(self) -> None:
            if not self._record(None):
                return self._send(Reply(503, {"error": {"message": "request limit reached"}}))
            if self.path.endswith("/models"):
                return self._send(Reply(200, {"object": "list", "data": [
                    {"id": "served-model", "object": "model", "created": 0, "owned_by": "test"}]}))
            self._send(Reply(404, {"error": {"message": "not found"}}))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not self._record(body):
                return self._send(Reply(503, {"error": {"message": "request limit reached"}}))
            with lock:
                reply = server.next_reply(body)
            self._send(reply)

    return Handler


@contextmanager
def serve(script: list[str | Reply], **options: Any) -> Iterator[ScriptedServer]:
    """Run a ScriptedServer on a free port of 127.0.0.1 for the duration of the block."""
    server = ScriptedServer(list(script), **options)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server, threading.Lock()))
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for testing the HTTP backend.

It speaks enough of the protocol for prefloop (`POST /v1/chat/completions`, OpenAI-style error bodies)
and misbehaves on request:
- `faults`: a queue of faults served to the next requests, one each: "429" (rate limited, with
  Retry-After), "500" / "502" / "503", "slow" (answers after `slow_seconds`, later than a short client
  timeout), "drop" (closes the connection without answering), "400" (rejects that one request as invalid);
- `delay`: every answer takes this long (to observe how many requests are in flight at once);
- `api_key`: requests without `Authorization: Bearer <api_key>` get 401;
- a model not in `models` gets 404; a user message containing "TOO_LONG" gets 400 (context length).

Answers are deterministic: "<model> [<seed>]: <last user message>" when sampling, without the seed at
temperature 0; the model "parrot" always answers the same, whatever the seed.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(
        self,
        models: tuple[str, ...] = ("alpha", "beta", "parrot"),
        *,
        api_key: str | None = None,
        delay: float = 0.0,
        slow_seconds: float = 2.0,
        retry_after: str = "0",
    ) -> None:
        self.models = set(models)
        self.api_key = api_key
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.faults: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []  # every request body received, faults included
        self.headers: list[dict[str, str]] = []
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, body: dict[str, Any]) -> str:
        last_user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        if body["model"] == "parrot" or not body.get("temperature"):
            return f"{body['model']}: {last_user}"
        return f"{body['model']} [{body.get('seed')}]: {last_user}"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                self._reply(status, {"error": {"message": message, "type": "fake_error", "code": status}}, headers)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    fault = fake.faults.popleft() if fake.faults else None
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._serve(body, fault)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up first: what "slow" is for
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _serve(self, body: dict[str, Any], fault: str | None) -> None:
                if self.path != "/v1/chat/completions":
                    return self._error(404, f"no route {self.path}")
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    return self._error(401, "Incorrect API key provided")
                if fault == "drop":
                    self.close_connection = True
                    return None
                if fault == "429":
                    return self._error(429, "Rate limit reached", {"Retry-After": fake.retry_after})
                if fault == "400":
                    return self._error(400, "Invalid request (a fault injected by the test)")
                if fault in ("500", "502", "503"):
                    return self._error(int(fault), "The server had an error")
                if fault == "slow":
                    time.sleep(fake.slow_seconds)
                if fake.delay:
                    time.sleep(fake.delay)
                if body.get("model") not in fake.models:
                    return self._error(404, f"The model '{body.get('model')}' does not exist")
                if any("TOO_LONG" in m.get("content", "") for m in body.get("messages", [])):
                    return self._error(400, "This model's maximum context length is 2048 tokens")
                text = fake.answer(body)
                with fake._lock:
                    fake.answered += 1
                    n = fake.answered
                words = text.split()
                limit = body.get("max_tokens") or len(words)
                return self._reply(200, {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words[:limit])},
                                 "finish_reason": "length" if len(words) > limit else "stop"}],
                    "usage": {"prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                              "completion_tokens": min(len(words), limit),
                              "total_tokens": 0},
                })

        return Handler

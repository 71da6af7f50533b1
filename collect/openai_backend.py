"""A client for any OpenAI-compatible chat-completions endpoint (vLLM, TGI, Ollama, OpenAI).

`ChatClient.chat(model, messages, params)` posts one `POST {base_url}/chat/completions` and returns the
parsed answer. Transient trouble (HTTP 429, 5xx, timeouts, dropped connections) is retried with
exponential backoff and jitter, honouring the server's `Retry-After`; when the retries run out the run
stops with a UserError. A request the server rejects for its own content (400, 413, 422: typically a
prompt over the context length) raises `RequestRejected`, so the caller can skip that prompt and go on;
a wrong key (401, 403) or an unknown model (404) stops the run at once, since every request would fail.

The API key is read from an environment variable (never from the command line, where `ps` shows it)
and is never written anywhere.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from collect.errors import UserError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REJECT_STATUS = {400, 413, 422}


@dataclass
class OpenAIEndpoint:
    """Where and how to reach an OpenAI-compatible chat-completions server."""

    base_url: str
    """Up to and including the API version, as the OpenAI client takes it: `http://localhost:8000/v1`."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key, sent as `Authorization: Bearer`. Unset: no header (local servers)."""
    timeout: float = 120.0
    """Seconds to wait for one answer (connecting is capped at 10 s) before retrying."""
    max_retries: int = 5
    """Retries of one request after a 429, a 5xx, a timeout or a dropped connection; then the run stops."""
    backoff: float = 1.0
    """First retry delay in seconds; doubles on each retry (with jitter), unless the server sends Retry-After."""
    max_backoff: float = 60.0
    """Longest delay between two retries, in seconds (also caps Retry-After)."""
    concurrency: int = 4
    """Requests in flight at once. Servers such as vLLM batch concurrent requests: raise it for throughput."""


class RequestRejected(Exception):
    """The server refused this one request (HTTP 400/413/422): skip it, the others may succeed."""


class ChatClient:
    """A thread-safe client for one endpoint; use it from a thread pool of `concurrency` workers."""

    def __init__(self, endpoint: OpenAIEndpoint) -> None:
        if not endpoint.base_url.startswith(("http://", "https://")):
            raise UserError(f"base URL {endpoint.base_url!r}: expected http://... or https://...")
        if endpoint.concurrency < 1 or endpoint.max_retries < 0 or endpoint.timeout <= 0:
            raise UserError("the endpoint needs concurrency >= 1, max_retries >= 0 and timeout > 0")
        self.endpoint = endpoint
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(endpoint.timeout, connect=min(10.0, endpoint.timeout)),
            limits=httpx.Limits(max_connections=endpoint.concurrency),
            trust_env=False,  # a proxy from the environment must not see the prompts of a local server
        )
        self._random = random.Random()
        self._lock = threading.Lock()
        self.retries = 0  # total retries so far, for the run summary

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """One chat completion: the server's JSON answer, with `choices[0].message.content` checked."""
        body = {"model": model, "messages": messages, **params}
        last_problem = ""
        for attempt in range(self.endpoint.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                last_problem = f"no answer within {self.endpoint.timeout:g} s"
                self._sleep(attempt, None)
                continue
            except httpx.TransportError as e:
                last_problem = f"connection failed ({type(e).__name__}: {e})"
                self._sleep(attempt, None)
                continue
            if response.status_code == 200:
                return self._parsed(response, model)
            problem = f"HTTP {response.status_code}: {_error_message(response)}"
            if response.status_code in RETRY_STATUS:
                last_problem = problem
                self._sleep(attempt, response.headers.get("retry-after"))
                continue
            if response.status_code in REJECT_STATUS:
                raise RequestRejected(problem)
            if response.status_code in (401, 403):
                raise UserError(f"{self.url}: {problem}; the server refused the API key "
                                f"(read from ${self.endpoint.api_key_env})")
            if response.status_code == 404:
                raise UserError(f"{self.url}: {problem}; check the base URL (it usually ends in /v1) "
                                f"and the model name {model!r}")
            raise UserError(f"{self.url}: {problem}")
        raise UserError(f"{self.url}: gave up after {self.endpoint.max_retries} retries; last problem: {last_problem}")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        if attempt >= self.endpoint.max_retries:
            return  # no retry follows: do not wait for nothing
        delay = None
        if retry_after:
            try:
                delay = float(retry_after)
            except ValueError:
                delay = None  # an HTTP date: rare from model servers, fall back to our own schedule
        if delay is None:
            with self._lock:
                jitter = self._random.uniform(0.5, 1.0)
            # Full doubling with jitter: many workers hitting one rate limit do not retry in lockstep.
            delay = self.endpoint.backoff * (2**attempt) * jitter
        time.sleep(min(max(delay, 0.0), self.endpoint.max_backoff))

    def _parsed(self, response: httpx.Response, model: str) -> dict[str, Any]:
        try:
            data = response.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise UserError(f"{self.url}: the answer for model {model!r} is not a chat completion: "
                            f"{response.text[:200]!r}") from None
        if content is not None and not isinstance(content, str):
            raise UserError(f"{self.url}: choices[0].message.content is {type(content).__name__}, not text")
        return data


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI-style {"error": {"message": ...}}, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
        if data.get("message"):
            return str(data["message"])[:500]
    return response.text[:200]

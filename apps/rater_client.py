"""Python clients for a running `prefloop serve`.

`RaterClient` speaks the JSON API (/api/v1) for programmatic raters:

    with RaterClient("http://127.0.0.1:7860", "ann", "secret") as c:
        while (item := c.next(project_id=1)) is not None:
            c.submit(item["assignment_id"], choice=+1)   # +1: the `left` response is better

`GradioRaterClient` drives the rater app's own Gradio events over HTTP, exactly as the browser does
(login cookie, session hash, Gradio's queue and server-sent events where the app uses them): the load
benchmark and the tests use it to measure and attack the path real raters take.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import uuid
from typing import Any

import httpx


class RaterAPIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class RaterClient:
    """The JSON API of a prefloop server, as one rater (HTTP Basic, or a trusted SSO header)."""

    def __init__(self, base_url: str, name: str, password: str | None = None, *, auth_header: str | None = None,
                 timeout: float = 30.0):
        headers = {auth_header: name} if auth_header else {}
        auth = None if auth_header else httpx.BasicAuth(name, password or "")
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/api/v1", auth=auth, headers=headers,
                                 timeout=timeout)

    def __enter__(self) -> "RaterClient":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        response = self.http.request(method, path, json=body if method == "POST" else None)
        if response.status_code != 200:
            try:
                message = response.json().get("detail")
            except ValueError:
                message = response.text
            raise RaterAPIError(response.status_code, str(message))
        return response.json()

    def projects(self) -> list[dict[str, Any]]:
        return self._call("GET", "/projects")["projects"]

    def next(self, project_id: int) -> dict[str, Any] | None:
        """The rater's open assignment or a new one (conversation, left, right, ...); None when done."""
        return self._call("POST", f"/projects/{project_id}/next", {})["assignment"]

    def submit(self, assignment_id: int, choice: int, *, client_token: str | None = None, both_bad: bool = False,
               criteria: dict[str, int] | None = None, rationale: str = "", rewrite: str | None = None) -> int:
        """Judge in screen terms (+2 left much better .. -2 right much better). Returns the judgment id.

        Pass your own client_token to retry safely: the same token never makes a second judgment.
        """
        body = {"choice": choice, "client_token": client_token or uuid.uuid4().hex, "both_bad": both_bad,
                "criteria": criteria or {}, "rationale": rationale, "rewrite": rewrite}
        return self._call("POST", f"/assignments/{assignment_id}/judgment", body)["judgment_id"]

    def skip(self, assignment_id: int, reason: str) -> None:
        self._call("POST", f"/assignments/{assignment_id}/skip", {"reason": reason})

    def flag(self, assignment_id: int, reason: str) -> None:
        self._call("POST", f"/assignments/{assignment_id}/flag", {"reason": reason})

    def activity(self, assignment_id: int) -> float:
        return self._call("POST", f"/assignments/{assignment_id}/activity", {})["active_seconds"]

    def undo(self, project_id: int) -> dict[str, Any]:
        return self._call("POST", f"/projects/{project_id}/undo", {})["assignment"]

    def me(self, project_id: int) -> dict[str, Any]:
        return self._call("GET", f"/projects/{project_id}/me")


class GradioRaterClient:
    """One browser tab's worth of the Gradio rater app, over HTTP: log in, then call events by api_name."""

    def __init__(self, base_url: str, name: str | None = None, password: str | None = None, *,
                 headers: dict[str, str] | None = None, timeout: float = 60.0, session_hash: str | None = None):
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers or {}, timeout=timeout)
        self.session_hash = session_hash or secrets.token_hex(6)
        if name is not None:
            response = self.http.post("/login", data={"username": name, "password": password or ""})
            if response.status_code != 200:
                raise RaterAPIError(response.status_code, response.text)
        self._config: dict[str, Any] | None = None

    def __enter__(self) -> "GradioRaterClient":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _dependency(self, api_name: str | int) -> dict[str, Any]:
        if self._config is None:
            response = self.http.get("/config")
            if response.status_code != 200:
                raise RaterAPIError(response.status_code, response.text)
            self._config = response.json()
        for dependency in self._config["dependencies"]:
            if api_name in (dependency.get("api_name"), dependency["id"]):
                return dependency
        raise KeyError(api_name)

    def _alert_error(self, dependency: dict[str, Any], outputs: list[Any]) -> str | None:
        """The message of an error the app showed in its alert (the per-item events answer errors there)."""
        alert = [c["id"] for c in self._config["components"] if c.get("props", {}).get("elem_id") == "pf-alert"]
        for component_id, value in zip(dependency["outputs"], outputs):
            if component_id in alert and isinstance(value, str) and 'class="pf-warning pf-error"' in value:
                return html.unescape(re.sub(r"<[^>]+>", "", value))
        return None

    def call(self, api_name: str | int, *data: Any) -> list[Any]:
        """Run one event as the browser does; its outputs, or RaterAPIError.

        api_name: the event's api_name or its fn_index. Events declared with queue=False are one POST to
        /gradio_api/run/predict (the app answers their errors in its alert, raised here); the others join
        Gradio's queue and their result arrives as a server-sent event.
        """
        dependency = self._dependency(api_name)
        body = {"data": list(data), "fn_index": dependency["id"], "session_hash": self.session_hash,
                "event_data": None, "trigger_id": None}
        if dependency.get("queue") is False:
            response = self.http.post("/gradio_api/run/predict", json=body)  # the browser's route, by fn_index
            if response.status_code != 200:
                payload = response.json() if response.headers.get("content-type", "").startswith(
                    "application/json") else {}
                raise RaterAPIError(400 if response.status_code == 500 else response.status_code,
                                    str(payload.get("error") or response.text))
            outputs = response.json()["data"]
            if (message := self._alert_error(dependency, outputs)) is not None:
                raise RaterAPIError(400, message)
            return outputs
        joined = self.http.post("/gradio_api/queue/join", json=body)
        if joined.status_code != 200:
            raise RaterAPIError(joined.status_code, joined.text)
        event_id = joined.json()["event_id"]
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as stream:
            if stream.status_code != 200:
                raise RaterAPIError(stream.status_code, stream.read().decode(errors="replace"))
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id or message.get("msg") != "process_completed":
                    continue
                if not message.get("success"):
                    output = message.get("output") or {}
                    raise RaterAPIError(400, str(output.get("error") or output))
                return message["output"]["data"]
        raise RaterAPIError(502, "the event stream ended without a result")

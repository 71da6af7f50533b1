"""Shared helpers for tests of the web apps: a real `prefloop serve` process, and Debian's Chromium.

Chromium comes from apt (`/usr/bin/chromium`); `playwright install` is never run (it downloads a browser).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def start_server(db_url: str, port: int, auth_header: str | None = None, log_path: Path | None = None,
                 timeout: float = 60.0) -> subprocess.Popen:
    """Start `apps.server.serve` in its own process (so a test can kill -9 it) and wait until it answers.

    The returned process carries `base_url` ("http://127.0.0.1:<port>").
    """
    code = (f"from apps.server import serve; serve(host='127.0.0.1', port={port}, db_url={db_url!r}, "
            f"auth_header={auth_header!r})")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}"
                               + (f"; log: {Path(log_path).read_text()[-3000:]}" if log_path else ""))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/gradio_api/app_id", timeout=2).status_code < 500:
                process.base_url = f"http://127.0.0.1:{port}"
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise TimeoutError(f"the server did not answer on port {port} within {timeout} s")


def stop_server(process: subprocess.Popen, kill: bool = False) -> None:
    """Stop a server started by start_server: SIGTERM (or SIGKILL with kill=True), then wait."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@contextmanager
def running_server(db_url: str, port: int, auth_header: str | None = None,
                   log_path: Path | None = None) -> Iterator[str]:
    """A server for the duration of a with-block; yields its base URL."""
    process = start_server(db_url, port, auth_header, log_path)
    try:
        yield process.base_url
    finally:
        stop_server(process)


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium browser driven by playwright (skips the test when either is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def gradio_login(page, base_url: str, name: str, password: str, ready_selector: str) -> None:
    """Log in through Gradio's login form and wait until `ready_selector` is on the page."""
    page.goto(base_url + "/")
    page.locator("input[type=password]").wait_for()
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Login", exact=True).click()
    page.locator(ready_selector).wait_for(timeout=30_000)


def wait_idle(page, timeout_ms: float = 60_000) -> None:
    """Wait until no Gradio event is pending on the page (every status tracker hidden)."""
    page.wait_for_function("document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0",
                           timeout=timeout_ms)


def login_client(base_url: str, name: str, password: str, mount: str = "") -> httpx.Client:
    """An httpx client holding a Gradio login cookie for the app mounted at `mount` ("" or "/admin")."""
    client = httpx.Client(base_url=base_url + mount, timeout=30)
    response = client.post("/login", data={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return client

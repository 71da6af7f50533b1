"""Who is calling: the one place the web apps learn the caller's identity.

Two ways in, chosen when the server starts:
- password login (the default): Gradio's login form calls `password_checker(db_url)`, which checks the name
  and password against the Argon2 hashes in the database. Gradio keeps a session cookie and hands every
  event handler `request.username`.
- a trusted header (`prefloop serve --auth-header X-Forwarded-User`): an SSO proxy in front of prefloop
  (oauth2-proxy, Authelia, a company gateway) logs people in and passes their name in that header. prefloop
  then believes the header, so the app must be reachable ONLY through the proxy (bind to 127.0.0.1 or a
  private network, and make the proxy overwrite the header on every request).
Either way the name must belong to a rater in the database who is not an imported (external) rater:
no one is created on the fly.

Every Gradio event handler of both apps starts with `current_rater(request, db_url)`: Gradio's own login
gate already refuses anonymous API calls, and this second check means a handler never acts for nobody.
The JSON API uses `rater_from_http`, with HTTP Basic credentials or the same trusted header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from typing import Any, Awaitable, Callable

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session

from collect import db
from collect.errors import PermissionDenied
from collect.models import Rater
from collect.projects import authenticate


class Unauthenticated(PermissionDenied):
    """No logged-in rater behind this request."""


def _load_rater(db_url: str, name: str | None, session: Session | None = None) -> Rater:
    if not name:
        raise Unauthenticated("log in first")
    if session is None:
        with db.session_scope(db_url) as own:
            return _load_rater(db_url, name, own)
    rater = session.scalar(select(Rater).where(Rater.name == name))
    # Looked up on every call: a rater removed from the database loses access at once, session or not.
    if rater is None or rater.external:
        raise Unauthenticated("unknown rater")
    return rater


def current_rater(request: Any, db_url: str, session: Session | None = None) -> Rater:
    """The rater behind a Gradio event (`request: gr.Request`), or Unauthenticated.

    Pass the handler's own `session` to look the rater up inside its transaction (one commit per event
    instead of two); without one, the returned Rater is detached: read its id, name and role only.
    """
    return _load_rater(db_url, getattr(request, "username", None) if request is not None else None, session)


def password_checker(db_url: str) -> Callable[[str, str], Awaitable[bool]]:
    """Gradio's `auth=` callable: name and password checked against the database."""

    def check(name: str, password: str) -> bool:
        with db.session_scope(db_url) as session:
            return authenticate(session, name, password) is not None

    async def login(name: str, password: str) -> bool:
        # Argon2 takes ~50 ms of CPU on purpose: off the event loop, so logins never stall other raters.
        return await anyio.to_thread.run_sync(check, name, password)

    return login


def header_dependency(header: str) -> Callable[[Any], str | None]:
    """Gradio's `auth_dependency=`: the user name from a header set by a trusted SSO proxy."""

    def user(request: Any) -> str | None:
        value = (request.headers.get(header) or "").strip()
        return value or None

    return user


def gradio_auth(db_url: str, auth_header: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `gr.mount_gradio_app`: password login, or the trusted header."""
    if auth_header:
        return {"auth_dependency": header_dependency(auth_header)}
    return {"auth": password_checker(db_url),
            "auth_message": "Log in with the name and password your project admin gave you."}


class _BasicCache:
    """Successful HTTP Basic logins, remembered so that a busy API client pays for Argon2 once an hour.

    Keyed by an HMAC of name and password under a per-process random key (a memory dump shows no
    password). Each entry keeps the password hash it was verified against: `rater_from_http` compares it
    with the rater's current hash on every request, so a changed password or a removed rater stops working
    at once, in every server process; the `ttl` only bounds how long an unused entry lingers.
    """

    def __init__(self, ttl: float = 3600.0, max_entries: int = 10_000):
        self.ttl, self.max_entries = ttl, max_entries
        self._key = secrets.token_bytes(32)
        self._seen: dict[bytes, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    def _digest(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def get(self, name: str, password: str) -> str | None:
        """The password hash these credentials were verified against, if they were, lately."""
        digest = self._digest(name, password)
        with self._lock:
            hit = self._seen.get(digest)
            return hit[1] if hit is not None and hit[0] == name and hit[2] > time.monotonic() else None

    def put(self, name: str, password: str, password_hash: str) -> None:
        with self._lock:
            if len(self._seen) >= self.max_entries:
                now = time.monotonic()
                self._seen = {k: v for k, v in self._seen.items() if v[2] > now}
                if len(self._seen) >= self.max_entries:
                    self._seen.clear()
            self._seen[self._digest(name, password)] = (name, password_hash, time.monotonic() + self.ttl)

    def forget(self, name: str, password: str) -> None:
        with self._lock:
            self._seen.pop(self._digest(name, password), None)


_basic_cache = _BasicCache()


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep and name else None


def authenticated_name(headers: Any, db_url: str, auth_header: str | None = None) -> str:
    """The user name a plain HTTP request proves: HTTP Basic checked against the database, or the trusted header.

    Touches the database only on the first request with given credentials (then cached, see _BasicCache).
    `headers` is any case-insensitive mapping (Starlette's request.headers). Raises Unauthenticated.
    """
    if auth_header:
        name = (headers.get(auth_header) or "").strip()
        if not name:
            raise Unauthenticated(f"no {auth_header} header: reach this server through the login proxy")
        return name
    credentials = _basic_credentials(headers.get("authorization"))
    if credentials is None:
        raise Unauthenticated("HTTP Basic credentials required")
    name, password = credentials
    if _basic_cache.get(name, password) is None:
        with db.session_scope(db_url) as own:
            rater = authenticate(own, name, password)
            if rater is None:
                raise Unauthenticated("wrong name or password")
            _basic_cache.put(name, password, rater.password_hash)
    return name


def rater_from_http(headers: Any, db_url: str, auth_header: str | None = None,
                    session: Session | None = None) -> Rater:
    """The rater behind a plain HTTP request (the JSON API), looked up in `session` when given.

    With HTTP Basic, the credentials must still match the rater's current password hash: a password changed
    by another process since they were cached is refused here.
    """
    rater = _load_rater(db_url, authenticated_name(headers, db_url, auth_header), session)
    if not auth_header:
        name, password = _basic_credentials(headers.get("authorization"))
        if _basic_cache.get(name, password) != rater.password_hash:
            _basic_cache.forget(name, password)
            raise Unauthenticated("wrong name or password")
    return rater

"""A small JSON API for programmatic raters (and load tests), beside the Gradio app on the same server.

The same collect/ calls and the same identity rules as the Gradio app: HTTP Basic checked against the
database (or the trusted SSO header when the server runs with --auth-header). Choices are in screen terms,
as the app takes them: +2 means the `left` response is much better. Every POST must carry a JSON body
(`Content-Type: application/json`): a cross-site form cannot send one without a CORS preflight, which this
server never grants, so a logged-in browser behind an SSO proxy cannot be made to post judgments.

    POST /api/v1/projects/{project_id}/next          -> {"assignment": {...} | null}
    POST /api/v1/assignments/{assignment_id}/judgment {"choice": 1, "client_token": "..."} -> {"judgment_id": 7}
    POST /api/v1/assignments/{assignment_id}/skip     {"reason": "..."}
    POST /api/v1/assignments/{assignment_id}/flag     {"reason": "..."}
    POST /api/v1/assignments/{assignment_id}/activity {}
    POST /api/v1/projects/{project_id}/undo           {} -> {"assignment": {...}} (the last judgment or skip)
    GET  /api/v1/projects                             -> {"projects": [...]}
    GET  /api/v1/projects/{project_id}/me             -> the rater's own summary
                                                         (gold_judged, gold_accuracy: check items judged
                                                         before today, UTC)

Errors are JSON: 401 (who are you), 403 (not yours, or no such id: an id past 2**31 - 1 is one), 400 (a bad
request), 422 (a malformed body or path), and 503 `{"detail": "database unavailable; retry"}` when the database
fails (stopped, unreachable, locked; the server's log says how): retry later; a judgment retried with its client_token
is never counted twice.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Iterator, Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from apps.web_auth import Unauthenticated, authenticated_name, rater_from_http
from collect import db
from collect.assign import (
    Served, flag_harmful, next_assignment, rater_summary, record_activity, reveal, skip, submit_judgment, undo_last,
)
from collect.errors import PermissionDenied, UserError
from collect.models import Rater
from collect.projects import projects_of

log = logging.getLogger(__name__)

DATABASE_FAILURES = (OperationalError, PoolTimeout)
"""The database failed, not the caller: a server stopped or restarting, a dropped connection, no connection free
in the pool, SQLite's lock held past its timeout. The transaction was rolled back, so a retry is safe (a judgment's
client token makes it so even when the commit itself was cut off). The JSON API answers 503, the rater app a
message to try again (apps.rater_app.errors_on_screen); both log it with `log_database_failure`."""


def log_database_failure(where: str, error: Exception) -> None:
    """One warning line per failed request or event, not a traceback each: `where` (the route or the event) and the
    driver's words. Those name the database's host and name: they go to the log, never to a client, who may be
    anyone able to send a login."""
    log.warning("%s: database unavailable: %s", where, db.driver_words(error))


class Judgment(BaseModel):
    """A judgment in screen terms: +2 left much better, +1 left better, 0 tie, -1 right better, -2 right much."""

    model_config = ConfigDict(extra="forbid")
    choice: StrictInt
    client_token: str = Field(min_length=1, max_length=100)
    """Any unique string per judgment: sending the same one again returns the first judgment (safe retries)."""
    both_bad: StrictBool = False
    criteria: dict[str, StrictInt] = Field(default_factory=dict)
    rationale: str = ""
    rewrite: Optional[str] = None


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _sent(session: Session, rater_id: int, served: Served | None, undoing: bool = False) -> dict[str, Any] | None:
    """An item as the API sends it. An API client receives the content at once, so a sensitive item is recorded as
    revealed now, wherever it comes from (next, or an undo of a skip made behind the app's content warning).
    Refused only past the daily cap: for `next`, an item served unrevealed (in the rater app) before the cap was
    reached, whose id lets the client skip it; for an undo, the whole request is rolled back and nothing undone."""
    if served is None:
        return None
    if served.sensitive:
        try:
            reveal(session, rater_id, served.assignment_id)
        except UserError as e:
            if undoing:
                raise UserError("nothing was undone: the item is sensitive and today's limit of sensitive items "
                                "is reached (more tomorrow)") from None
            raise UserError(f"{e}: POST /api/v1/assignments/{served.assignment_id}/skip") from None
    out = asdict(served)
    out["lease_expires_at"] = served.lease_expires_at.isoformat() + "Z"
    return out


def _require_json(request: Request) -> None:
    if request.method == "POST" and not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(415, "send a JSON body (Content-Type: application/json)")


def api_router(db_url: str, auth_header: str | None = None) -> APIRouter:
    """The /api/v1 routes; `add_error_handlers` must be applied to the app that includes them."""

    @contextmanager
    def as_caller(request: Request) -> Iterator[tuple[Session, Rater]]:
        # One transaction per request, the caller's identity checked inside it: one commit, not two.
        with db.session_scope(db_url) as session:
            yield session, rater_from_http(request.headers, db_url, auth_header, session)

    def require_credentials(request: Request) -> None:
        # Before anything else, even parameter validation: an anonymous caller learns nothing, not even
        # which ids are well-formed. The rater record itself is read inside each request's transaction.
        authenticated_name(request.headers, db_url, auth_header)

    router = APIRouter(dependencies=[Depends(require_credentials), Depends(_require_json)])

    @router.get("/projects")
    def projects(request: Request) -> dict:
        with as_caller(request) as (session, rater):
            return {"projects": [{"id": p.id, "name": p.name, "description": p.description, "rubric": p.rubric,
                                  "guidelines": p.guidelines} for p in projects_of(session, rater)]}

    @router.post("/projects/{project_id}/next")
    def next_(project_id: int, _body: Empty, request: Request) -> dict:
        with as_caller(request) as (session, rater):
            return {"assignment": _sent(session, rater.id, next_assignment(session, project_id, rater.id))}

    @router.post("/assignments/{assignment_id}/judgment")
    def judgment(assignment_id: int, body: Judgment, request: Request) -> dict:
        with as_caller(request) as (session, rater):
            judgment_id = submit_judgment(
                session, rater.id, assignment_id, body.choice, client_token=body.client_token,
                both_bad=body.both_bad, criteria=body.criteria, rationale=body.rationale, rewrite=body.rewrite).id
        # Answered only after the commit: an acknowledged judgment is a committed one.
        return {"judgment_id": judgment_id, "assignment_id": assignment_id}

    @router.post("/assignments/{assignment_id}/skip")
    def skip_(assignment_id: int, body: Reason, request: Request) -> dict:
        with as_caller(request) as (session, rater):
            skip(session, rater.id, assignment_id, body.reason)
        return {"ok": True}

    @router.post("/assignments/{assignment_id}/flag")
    def flag(assignment_id: int, body: Reason, request: Request) -> dict:
        with as_caller(request) as (session, rater):
            flag_harmful(session, rater.id, assignment_id, body.reason)
        return {"ok": True}

    @router.post("/assignments/{assignment_id}/activity")
    def activity(assignment_id: int, _body: Empty, request: Request) -> dict:
        with as_caller(request) as (session, rater):
            active = record_activity(session, rater.id, assignment_id)
        return {"active_seconds": active}

    @router.post("/projects/{project_id}/undo")
    def undo(project_id: int, _body: Empty, request: Request) -> dict:
        with as_caller(request) as (session, rater):
            served = _sent(session, rater.id, undo_last(session, rater.id, project_id), undoing=True)
        return {"assignment": served}

    @router.get("/projects/{project_id}/me")
    def me(project_id: int, request: Request) -> dict:
        with as_caller(request) as (session, rater):
            return asdict(rater_summary(session, rater.id, project_id))

    return router


def add_error_handlers(app: FastAPI, auth_header: str | None = None) -> None:
    """collect's errors as JSON, `{"detail": message}` as FastAPI's own (415, 422): 401 who are you, 403 not yours,
    400 bad request, 503 the database failed (retry).

    An id no row can have (out of the database's range) is refused in collect as an unknown id is: 403."""

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    def database_unavailable(request: Request, e: Exception) -> JSONResponse:
        log_database_failure(f"{request.method} {request.url.path}", e)
        return JSONResponse({"detail": "database unavailable; retry"}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Unauthenticated)
    def unauthenticated(_request: Request, e: Unauthenticated) -> JSONResponse:
        headers = {} if auth_header else {"WWW-Authenticate": 'Basic realm="prefloop"'}
        return JSONResponse({"detail": str(e)}, status_code=401, headers=headers)

    @app.exception_handler(PermissionDenied)
    def denied(_request: Request, e: PermissionDenied) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=403)

    @app.exception_handler(UserError)
    def bad(_request: Request, e: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

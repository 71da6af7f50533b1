"""`prefloop serve`: one web server with the rater app at /, the admin dashboard at /admin, the JSON API at /api/v1.

Logins: by default each app shows a login form checked against the database (collect.projects.authenticate).
With `auth_header="X-Forwarded-User"` an SSO proxy in front of prefloop authenticates people and passes the
user name in that header; prefloop then trusts the header, so it must be reachable only through the proxy.
Example with oauth2-proxy (which sets X-Forwarded-User when run with --pass-user-headers):

    prefloop serve --host 127.0.0.1 --port 7860 --auth-header X-Forwarded-User
    oauth2-proxy --upstream http://127.0.0.1:7860 --pass-user-headers ...

Gradio keeps login sessions and per-tab state in the server process: run one process per database, or
several behind a load balancer with sticky sessions (PostgreSQL then serves them all).
"""

from __future__ import annotations

import ipaddress
import logging
import os

# No call home from Gradio: set before it is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Gradio's queue otherwise rebuilds a pandas summary of its last 10,000 events after every event
# (for its monitoring page): a third of the server's CPU under load. Once per 1,000 events is plenty.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
# Gradio wraps every event in a matplotlib backend switch; with the backend left to auto-detection that
# probes for GUI toolkits each time (~5 ms an event). A server draws with Agg anyway.
os.environ.setdefault("MPLBACKEND", "agg")

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from apps.rater_api import add_error_handlers, api_router  # noqa: E402
from apps.rater_app import build_rater_app, mount_options  # noqa: E402
from apps.web_auth import gradio_auth  # noqa: E402
from collect import db  # noqa: E402

log = logging.getLogger(__name__)

CONCURRENCY = 16
"""Gradio events of one kind (e.g. submit) run at most this many at once; the rest wait in Gradio's queue."""


def _mount(app: FastAPI, blocks: gr.Blocks, path: str, login: dict, options: dict) -> None:
    blocks.queue(default_concurrency_limit=CONCURRENCY)
    gr.mount_gradio_app(
        app, blocks, path, **login, **options,
        # Exceptions other than the messages we raise for users stay in the server log.
        show_error=False, footer_links=["api"], run_history=False, mcp_server=False, ssr_mode=False)


def create_server(db_url: str | None = None, auth_header: str | None = None) -> FastAPI:
    """The whole web server as a FastAPI app (run it with uvicorn, or with `serve`)."""
    db_url = db.database_url(db_url)
    db.require_database(db_url)
    app = FastAPI(title="prefloop", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(api_router(db_url, auth_header), prefix="/api/v1")
    add_error_handlers(app, auth_header)
    # Starlette matches mounts in order: /admin before the catch-all / of the rater app.
    from apps import admin_app

    # The dashboard's own gate lets only admins log in at /admin; its handlers check the role again.
    _mount(app, admin_app.build_admin_app(db_url, auth_header=auth_header), "/admin",
           admin_app.login_options(db_url, auth_header), admin_app.mount_options())
    _mount(app, build_rater_app(db_url, auth_header=auth_header), "/", gradio_auth(db_url, auth_header),
           mount_options())
    return app


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(host: str = "127.0.0.1", port: int = 7860, db_url: str | None = None,
          auth_header: str | None = None) -> None:
    """Run the web server until interrupted."""
    import uvicorn

    app = create_server(db_url, auth_header)
    if auth_header and not _is_loopback(host):
        log.warning("trusting the %s header while listening on %s: make sure only your SSO proxy can reach "
                    "this port, or anyone can claim to be anyone", auth_header, host)
    print(f"prefloop: rater app at http://{host}:{port}/  (admin: /admin, JSON API: /api/v1)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)

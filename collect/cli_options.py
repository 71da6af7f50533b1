"""Options that several `prefloop` commands share (apps/cli.py, collect/quality_cli.py): one spelling, one help.

Each is a `typer.Option` used as a parameter's default, e.g. `url: Optional[str] = DB_OPTION`.
"""

from __future__ import annotations

import typer

from collect.db import DEFAULT_URL

DB_HELP = f"SQLAlchemy URL of the collection database (default {DEFAULT_URL})."
"""--db's help text, in every command that opens the collection database (typer adds `[env var: PREFLOOP_DB]`)."""

DB_OPTION = typer.Option(None, "--db", envvar="PREFLOOP_DB", help=DB_HELP)
PROJECT_OPTION = typer.Option(..., "--project", help="Project name or id.")
CSV_OUT_OPTION = typer.Option(None, "--out", help="Also write the table to this CSV file.")
ADMIN_OPTION = typer.Option(..., "--admin", help="Your admin name (recorded in the audit log).")

"""Storage basics: migrations match the models, SQLite runs in WAL mode, passwords are Argon2id, no call-home."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from collect import db
from collect.projects import add_rater, authenticate
from tests.conftest import REPO


def test_migrations_match_the_models(db_url):
    config = Config()
    config.set_main_option("script_location", str(REPO / "collect" / "migrations"))
    config.attributes["engine"] = db.get_engine(db_url)
    command.check(config)  # raises if autogenerate would find any difference
    db.upgrade(db_url)  # a second upgrade is a no-op


def test_sqlite_is_in_wal_mode_with_foreign_keys(sqlite_url):
    with db.get_engine(sqlite_url).connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.execute(text("PRAGMA integrity_check")).scalar() == "ok"


def test_passwords_are_hashed_with_argon2id(db_url):
    with db.session_scope(db_url) as s:
        rater = add_rater(s, "alice", "correct horse")
        assert rater.password_hash.startswith("$argon2id$") and "correct horse" not in rater.password_hash
    with db.session_scope(db_url) as s:
        assert authenticate(s, "alice", "correct horse").name == "alice"
        assert authenticate(s, "alice", "wrong") is None
        assert authenticate(s, "nobody", "correct horse") is None


def test_importing_prefloop_switches_telemetry_off_unless_the_user_chose():
    code = "import os, reward; print(os.environ['HF_HUB_DISABLE_TELEMETRY'], os.environ['GRADIO_ANALYTICS_ENABLED'])"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_TELEMETRY", "GRADIO_ANALYTICS_ENABLED")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False"]
    env["GRADIO_ANALYTICS_ENABLED"] = "True"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "True"]

"""Storage basics: migrations match the models, SQLite runs in WAL mode and never reuses a judgment's id, passwords
are Argon2id, no call-home."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text

from collect import db
from collect.models import Base
from collect.projects import add_rater, authenticate
from tests.conftest import REPO


def test_migrations_match_the_models(db_url):
    config = Config()
    config.set_main_option("script_location", str(REPO / "collect" / "migrations"))
    config.attributes["engine"] = db.get_engine(db_url)
    command.check(config)  # raises if autogenerate would find any difference
    db.upgrade(db_url)  # a second upgrade is a no-op


def migrations_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(REPO / "collect" / "migrations"))
    config.attributes["engine"] = db.get_engine(url)
    return config


ROWS_AT_0003 = [
    "INSERT INTO project (id, name, description, guidelines, rubric, overlap, gold_rate, pay_rate, currency, "
    "lease_seconds, routing, sensitive_daily_cap, break_after_minutes, idle_seconds, created_at, repeat_rate) VALUES "
    "(1, 'p', '', '', '[]', 2, 0, 0, 'USD', 900, 'any', 20, 50, 120, CURRENT_TIMESTAMP, 0)",
    "INSERT INTO rater (id, name, role, expertise, sensitive_opt_in, external, created_at) VALUES "
    "(1, 'r0', 'rater', '[]', '[]', false, CURRENT_TIMESTAMP)",
    "INSERT INTO prompt (id, project_id, conversation, tags, sensitive, domain, source, content_hash, created_at) "
    "VALUES (1, 1, '[]', '[]', '', '', '', 'h', CURRENT_TIMESTAMP)",
    "INSERT INTO response (id, prompt_id, model, content, generation, content_hash, created_at) VALUES "
    "(1, 1, '', 'a', '{}', 'ha', CURRENT_TIMESTAMP), (2, 1, '', 'b', '{}', 'hb', CURRENT_TIMESTAMP)",
    "INSERT INTO pair (id, project_id, prompt_id, response_a_id, response_b_id, is_gold, status, n_claimed, "
    "source, created_at) VALUES (1, 1, 1, 1, 2, false, 'active', 1, '', CURRENT_TIMESTAMP)",
    "INSERT INTO assignment (id, project_id, pair_id, rater_id, served_at, left_is_a, lease_expires_at, status, "
    "active_seconds, last_activity_at, is_repeat) VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP, true, CURRENT_TIMESTAMP, "
    "'submitted', 12.5, CURRENT_TIMESTAMP, false)",
    "INSERT INTO judgment (id, project_id, pair_id, rater_id, assignment_id, choice, left_is_a, both_bad, criteria, "
    "rationale, submitted_at, kind, client_token, external_key) VALUES "
    "(1, 1, 1, 1, 1, 2, true, false, '{\"helpful\": 1}', 'why', '2026-01-02 03:04:05', 'rater', 't1', NULL), "
    "(5, 1, 1, 1, NULL, -1, NULL, true, '{}', '', '2026-01-02 03:04:06', 'import', NULL, 'k5'), "
    "(7, 1, 1, 1, NULL, 0, NULL, false, '{}', '', '2026-01-02 03:04:07', 'import', NULL, 'k7')",
]


def judgment_schema(url: str) -> dict:
    """The judgment table as SQLAlchemy reflects it, in an order that does not depend on how it was made."""
    engine = create_engine(url)
    try:
        return _schema(inspect(engine))
    finally:
        engine.dispose()


def _schema(found) -> dict:
    return {
        "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns("judgment")],
        "primary key": found.get_pk_constraint("judgment")["constrained_columns"],
        "foreign keys": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
                                f["options"].get("ondelete")) for f in found.get_foreign_keys("judgment")),
        "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints("judgment")),
        "indexes": sorted((i["name"], tuple(i["column_names"]), i["unique"]) for i in found.get_indexes("judgment")),
    }


def judgment_sql(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(text("SELECT sql FROM sqlite_master WHERE name = 'judgment'")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrading_a_0003_database_keeps_its_judgments_and_never_reuses_their_ids(backend, tmp_path, request):
    """0004 rebuilds SQLite's judgment table with AUTOINCREMENT: every row, index, unique constraint and foreign key
    stays, the table matches the one a fresh database gets, and a deleted judgment's id is not handed out again."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        from tests.postgres import new_database

        url = new_database(request.getfixturevalue("postgres_server"))
    config = migrations_config(url)
    command.upgrade(config, "0003")
    with db.get_engine(url).begin() as c:
        for statement in ROWS_AT_0003:
            c.execute(text(statement))
        before = c.execute(text("SELECT * FROM judgment ORDER BY id")).all()
        if backend == "postgres":  # rows inserted with explicit ids: move the sequence past them, as an app would
            c.execute(text("SELECT setval('judgment_id_seq', 7)"))
    if backend == "sqlite":
        assert "AUTOINCREMENT" not in judgment_sql(url)
    schema_before = judgment_schema(url)
    command.upgrade(config, "head")
    with db.get_engine(url).begin() as c:
        assert c.execute(text("SELECT * FROM judgment ORDER BY id")).all() == before
        assert judgment_schema(url) == schema_before
        c.execute(text("DELETE FROM judgment WHERE id = 7"))  # an undo of the newest judgment
        c.execute(text("INSERT INTO judgment (project_id, pair_id, rater_id, choice, both_bad, criteria, rationale, "
                       "submitted_at, kind) VALUES (1, 1, 1, 1, false, '{}', '', CURRENT_TIMESTAMP, 'rater')"))
        assert c.execute(text("SELECT max(id) FROM judgment")).scalar() == 8
    if backend == "sqlite":
        with db.get_engine(url).connect() as c:
            assert c.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert "AUTOINCREMENT" in judgment_sql(url)
        fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
        engine = create_engine(fresh)
        Base.metadata.create_all(engine)
        engine.dispose()
        assert "AUTOINCREMENT" in judgment_sql(fresh)
        assert judgment_schema(url) == judgment_schema(fresh)
    command.downgrade(config, "0003")  # and back: the rows stay
    with db.get_engine(url).connect() as c:
        assert c.execute(text("SELECT id FROM judgment ORDER BY id")).scalars().all() == [1, 5, 8]
    if backend == "sqlite":
        assert "AUTOINCREMENT" not in judgment_sql(url)
    assert judgment_schema(url) == schema_before
    db.get_engine(url).dispose()


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

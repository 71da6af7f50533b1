"""Many raters at once through a real server, and a server killed with SIGKILL in the middle of it.

Both run the same check at the end: every pair has exactly k judgments from k different raters, every
acknowledged judgment is in the database, none is duplicated. PostgreSQL in the first test, SQLite in the
second (before and after the kill).

The simulated raters are the load benchmark's (bench/rater_app_load.py), run flat out until no work is left:
half use the Gradio app's own events (as the browser does), half the JSON API.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from bench.rater_app_load import build_database, run_raters
from collect import db
from collect.models import Judgment, Pair
from tests.browser import start_server, stop_server
from tests.postgres import free_port, new_database


def _rows(n_pairs: int) -> list[dict]:
    return [{"prompt": f"question {i}", "response_a": f"answer a{i}", "response_b": f"answer b{i}"}
            for i in range(n_pairs)]


def _judgments(url: str, project_id: int):
    with db.session_scope(url) as s:
        rows = s.execute(select(Judgment.assignment_id, Judgment.pair_id, Judgment.rater_id)
                         .where(Judgment.project_id == project_id)).all()
        claimed = list(s.scalars(select(Pair.n_claimed).where(Pair.project_id == project_id)))
    return rows, claimed


def _stored_judgments(sqlite_path: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)) as c:
        return c.execute("SELECT count(*) FROM judgment").fetchone()[0]


def _assert_complete(rows, claimed, n_pairs: int, overlap: int) -> None:
    per_pair = Counter(p for _, p, _ in rows)
    assert len(per_pair) == n_pairs and set(per_pair.values()) == {overlap}  # exactly k judgments per pair
    assert len({(p, r) for _, p, r in rows}) == len(rows)  # ... from k different raters
    assert len({a for a, _, _ in rows}) == len(rows)  # one judgment per assignment
    assert claimed == [overlap] * n_pairs  # and the slot counters agree


@pytest.mark.postgres
def test_many_raters_at_once_on_postgresql(postgres_server, tmp_path):
    # The same on SQLite is the second half of the kill -9 test below.
    db_url = new_database(postgres_server)
    n_pairs, overlap, raters = 30, 3, 12
    project_id = build_database(db_url, raters, _rows(n_pairs), overlap=overlap)
    server = start_server(db_url, free_port(), log_path=tmp_path / "server.log")
    try:
        stats, _ = run_raters(server.base_url, project_id, ["gradio", "json"] * (raters // 2))
    finally:
        stop_server(server)
    assert stats.errors == []
    rows, claimed = _judgments(db_url, project_id)
    assert sorted(a for a, _, _ in rows) == sorted(stats.acknowledged)  # none lost, none unacknowledged
    _assert_complete(rows, claimed, n_pairs, overlap)
    db.get_engine(db_url).dispose()


def test_kill_9_loses_no_acknowledged_judgment(sqlite_url, tmp_path):
    # Enough work that the raters are still busy when the kill comes: it waits for judgments to be on
    # disk (not for a fixed time, which a fast machine outruns), then strikes with requests in flight.
    n_pairs, overlap, raters = 150, 2, 10
    project_id = build_database(sqlite_url, raters, _rows(n_pairs), overlap=overlap, lease_seconds=600)
    path = sqlite_url.removeprefix("sqlite:///")
    log = tmp_path / "server.log"
    server = start_server(sqlite_url, free_port(), log_path=log)
    killed = {}

    def kill_mid_run() -> None:
        def later() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and _stored_judgments(path) < 40:
                time.sleep(0.02)
            killed["stored"] = _stored_judgments(path)
            stop_server(server, kill=True)  # SIGKILL: no shutdown, no flush, requests in flight

        threading.Thread(target=later, daemon=True).start()

    try:
        before, _ = run_raters(server.base_url, project_id, ["json", "gradio"] * (raters // 2), on_start=kill_mid_run)
    finally:
        stop_server(server, kill=True)
    assert killed["stored"] < n_pairs * overlap and server.returncode == -9  # killed mid-run
    assert before.acknowledged and before.errors  # it died under load: acknowledged work, and cut-off requests
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    rows, _ = _judgments(sqlite_url, project_id)
    assert set(before.acknowledged) <= {a for a, _, _ in rows}  # every acknowledged judgment survived

    # Restart on the same file; the same raters pick up their open assignments and finish the project.
    server = start_server(sqlite_url, free_port(), log_path=log)
    try:
        after, _ = run_raters(server.base_url, project_id, ["json", "gradio"] * (raters // 2))
    finally:
        stop_server(server)
    assert after.errors == []
    rows, claimed = _judgments(sqlite_url, project_id)
    assert set(before.acknowledged) | set(after.acknowledged) <= {a for a, _, _ in rows}
    _assert_complete(rows, claimed, n_pairs, overlap)
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

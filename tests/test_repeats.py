"""Repeats: a pair a rater judged a while ago comes back once, sides swapped, to measure their consistency.

A repeat takes no overlap slot, its judgment (kind "repeat") stays out of aggregation and export, and the
rater table's swap consistency reads it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from collect import assign, db
from collect.aggregate import majority_vote
from collect.assign import REPEAT_GAP, next_assignment, reveal, skip, submit_judgment, undo_last
from collect.ingest import import_dataset
from collect.judgments import QUALITY_KINDS, judgments_frame
from collect.models import Assignment, Judgment, Pair, Project, Rater
from collect.payroll import payroll
from collect.rater_quality import rater_table
from collect.status import project_status
from tests.test_assignment import setup_project

N_PAIRS = REPEAT_GAP + 3


@pytest.fixture
def always_repeat(monkeypatch):
    """Make every serving that can be a repeat one (the draw against repeat_rate always succeeds)."""
    monkeypatch.setattr(assign.random, "random", lambda: 0.0)


def judge_next(url, pid, rater, choice_on_screen=1):
    """Serve the rater's next item and submit `choice_on_screen` (+1: left better); the Assignment row."""
    with db.session_scope(url) as s:
        served = next_assignment(s, pid, rater)
        if served.sensitive:  # shown first, as the rater app does when the rater asks
            reveal(s, rater, served.assignment_id)
        submit_judgment(s, rater, served.assignment_id, choice_on_screen, client_token=uuid.uuid4().hex)
        return s.get(Assignment, served.assignment_id)


def test_no_repeat_before_the_gap_then_one_with_sides_swapped(db_url, always_repeat):
    pid, (r0,), _ = setup_project(db_url, n_pairs=N_PAIRS, overlap=1, raters=1, repeat_rate=0.2)
    firsts = [judge_next(db_url, pid, r0) for _ in range(REPEAT_GAP)]
    assert not any(a.is_repeat for a in firsts)  # nothing judged long enough ago yet
    fresh = judge_next(db_url, pid, r0)
    assert not fresh.is_repeat
    repeat = judge_next(db_url, pid, r0, choice_on_screen=-1)  # now the first pair is REPEAT_GAP+1 back
    original = firsts[0]
    assert repeat.is_repeat and repeat.pair_id == original.pair_id and repeat.left_is_a == (not original.left_is_a)
    with db.session_scope(db_url) as s:
        kinds = dict(s.execute(select(Judgment.assignment_id, Judgment.kind)).all())
        n_claimed = s.scalar(select(Pair.n_claimed).where(Pair.id == original.pair_id))
        first, again = s.scalars(select(Judgment.choice).where(Judgment.pair_id == original.pair_id)
                                 .order_by(Judgment.id)).all()
    assert kinds[repeat.id] == "repeat" and kinds[original.id] == "rater"
    assert n_claimed == 1  # the overlap is k = 1 and stays met: a repeat holds no slot
    assert first == again  # "left", then "right" with the sides swapped: the same answer about A and B


def test_repeats_feed_consistency_only(db_url, always_repeat):
    pid, (r0,), _ = setup_project(db_url, n_pairs=N_PAIRS, overlap=1, raters=1, repeat_rate=0.2)
    for _ in range(REPEAT_GAP + 1):
        judge_next(db_url, pid, r0, choice_on_screen=1)
    assert judge_next(db_url, pid, r0, choice_on_screen=1).is_repeat  # a left-clicker answers "left" again
    with db.session_scope(db_url) as s:
        plain = judgments_frame(s, pid)
        quality = judgments_frame(s, pid, QUALITY_KINDS)
        pay = payroll(s, s.get(Project, pid))
    assert len(plain) == REPEAT_GAP + 1 and len(quality) == REPEAT_GAP + 2
    assert (majority_vote(plain)["n_judgments"] == 1).all()  # the repeat is not a second vote
    table = rater_table(quality).set_index("rater_id")
    assert table.loc[r0, "n_repeats"] == 1 and table.loc[r0, "consistency"] == 0.0  # it flipped with the sides
    assert table.loc[r0, "n_judgments"] == REPEAT_GAP + 2
    assert int(pay.set_index("rater_id").loc[r0, "judgments"]) == REPEAT_GAP + 2  # repeats are paid work


def test_never_gold_never_sensitive_never_twice(db_url, always_repeat):
    # Pair 1's prompt is sensitive (the rater opted in), pair 2 is gold: both are judged, neither comes back.
    pid, (r0,), _ = setup_project(db_url, n_pairs=N_PAIRS + 2, overlap=1, raters=1, repeat_rate=0.2, gold_rate=0.1,
                                  tags={0: ["sensitive:violence"]}, sensitive_daily_cap=100)
    with db.session_scope(db_url) as s:
        s.get(Rater, r0).sensitive_opt_in = ["violence"]
        gold = s.get(Pair, 2)
        gold.is_gold, gold.gold_choice = True, 1
    served = [judge_next(db_url, pid, r0) for _ in range(N_PAIRS + 2)]
    repeats = [a.pair_id for a in served if a.is_repeat]
    assert {1, 2} <= {a.pair_id for a in served if not a.is_repeat}
    assert repeats and not set(repeats) & {1, 2}
    assert len(set(repeats)) == len(repeats)  # each pair comes back at most once


def test_a_skipped_repeat_gives_back_no_slot(db_url, always_repeat):
    pid, (r0,), _ = setup_project(db_url, n_pairs=N_PAIRS, overlap=2, raters=1, repeat_rate=0.2)
    for _ in range(REPEAT_GAP + 1):
        judge_next(db_url, pid, r0)
    with db.session_scope(db_url) as s:
        claimed_before = dict(s.execute(select(Pair.id, Pair.n_claimed)).all())
        served = next_assignment(s, pid, r0)
        assert s.get(Assignment, served.assignment_id).is_repeat
        skip(s, r0, served.assignment_id, "I judged this already")
    with db.session_scope(db_url) as s:
        assert dict(s.execute(select(Pair.id, Pair.n_claimed)).all()) == claimed_before


OLD_ROWS = [
    "INSERT INTO project (id, name, description, guidelines, rubric, overlap, gold_rate, pay_rate, currency, "
    "lease_seconds, routing, sensitive_daily_cap, break_after_minutes, idle_seconds, created_at) VALUES "
    "(1, 'p', '', '', '[]', 2, 0, 0, 'USD', 900, 'any', 20, 50, 120, CURRENT_TIMESTAMP)",
    "INSERT INTO rater (id, name, role, expertise, sensitive_opt_in, external, created_at) VALUES "
    "(1, 'r0', 'rater', '[]', '[]', false, CURRENT_TIMESTAMP)",
    "INSERT INTO prompt (id, project_id, conversation, tags, sensitive, domain, source, content_hash, created_at) "
    "VALUES (1, 1, '[{\"role\": \"user\", \"content\": \"q\"}]', '[]', '', '', '', 'h', CURRENT_TIMESTAMP)",
    "INSERT INTO response (id, prompt_id, model, content, generation, content_hash, created_at) VALUES "
    "(1, 1, '', 'a', '{}', 'ha', CURRENT_TIMESTAMP), (2, 1, '', 'b', '{}', 'hb', CURRENT_TIMESTAMP)",
    "INSERT INTO pair (id, project_id, prompt_id, response_a_id, response_b_id, is_gold, status, n_claimed, "
    "source, created_at) VALUES (1, 1, 1, 1, 2, false, 'active', 1, '', CURRENT_TIMESTAMP)",
    "INSERT INTO assignment (id, project_id, pair_id, rater_id, served_at, left_is_a, lease_expires_at, status, "
    "active_seconds, last_activity_at) VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP, true, CURRENT_TIMESTAMP, "
    "'submitted', 12.5, CURRENT_TIMESTAMP)",
    "INSERT INTO judgment (id, project_id, pair_id, rater_id, assignment_id, choice, both_bad, criteria, rationale, "
    "submitted_at, kind) VALUES (1, 1, 1, 1, 1, 2, false, '{}', '', CURRENT_TIMESTAMP, 'rater')",
]


def database_at(revision: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Config]:
    """A new database migrated to `revision` and holding OLD_ROWS; its URL and the Alembic config that migrates it."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        from tests.postgres import new_database

        url = new_database(request.getfixturevalue("postgres_server"))
    config = Config()
    config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    config.attributes["engine"] = db.get_engine(url)
    command.upgrade(config, revision)
    with db.get_engine(url).begin() as c:
        for statement in OLD_ROWS:
            c.execute(text(statement))
    return url, config


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrading_a_0001_database_keeps_its_assignments(backend, tmp_path, request):
    url, config = database_at("0001", backend, tmp_path, request)
    command.upgrade(config, "head")
    with db.session_scope(url) as s:
        old = s.get(Assignment, 1)
        assert (old.status, old.active_seconds, old.is_repeat) == ("submitted", 12.5, False)
        assert s.get(Judgment, 1).assignment_id == 1  # rebuilding the table on SQLite must not cut this link
        assert s.get(Project, 1).repeat_rate == 0.0
        s.add(Assignment(id=2, project_id=1, pair_id=1, rater_id=1, left_is_a=False, is_repeat=True,
                         lease_expires_at=old.lease_expires_at))  # one repeat of the pair: allowed
    with pytest.raises(IntegrityError):  # a second plain assignment of the same pair to the same rater is not
        with db.session_scope(url) as s:
            s.add(Assignment(id=3, project_id=1, pair_id=1, rater_id=1, left_is_a=True,
                             lease_expires_at=old.lease_expires_at))
    command.downgrade(config, "0001")  # and back: the repeat goes, the rest stays
    with db.get_engine(url).connect() as c:
        assert c.execute(text("SELECT id FROM assignment")).scalars().all() == [1]
        assert c.execute(text("SELECT assignment_id FROM judgment")).scalars().all() == [1]
    db.get_engine(url).dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrading_recounts_the_claims_an_import_once_inflated(backend, tmp_path, request):
    """Before 0003 every import recounted n_claimed counting repeats and adjudications: a pair judged once, shown
    again as a repeat and decided by an admin read 3 claims at overlap 2, and no second rater ever got it."""
    url, config = database_at("0002", backend, tmp_path, request)
    with db.get_engine(url).begin() as c:
        c.execute(text("INSERT INTO assignment (id, project_id, pair_id, rater_id, served_at, left_is_a, "
                       "lease_expires_at, status, active_seconds, last_activity_at, is_repeat) VALUES (2, 1, 1, 1, "
                       "CURRENT_TIMESTAMP, false, CURRENT_TIMESTAMP, 'open', 0, CURRENT_TIMESTAMP, true)"))
        c.execute(text("INSERT INTO judgment (id, project_id, pair_id, rater_id, assignment_id, choice, both_bad, "
                       "criteria, rationale, submitted_at, kind) VALUES (2, 1, 1, 1, NULL, 1, false, '{}', '', "
                       "CURRENT_TIMESTAMP, 'adjudication')"))
        c.execute(text("UPDATE pair SET n_claimed = 3"))
    command.upgrade(config, "head")
    with db.session_scope(url) as s:
        # The rater's own submitted judgment; the repeat and the decision hold no slot.
        assert s.get(Pair, 1).n_claimed == 1
    db.get_engine(url).dispose()


def test_an_import_leaves_repeats_out_of_the_overlap(db_url, always_repeat):
    """Repeats, judged or open, hold no slot after an import either: the second rater still gets those pairs."""
    pid, (r0, r1), _ = setup_project(db_url, n_pairs=N_PAIRS, overlap=2, raters=2, repeat_rate=0.2)
    for _ in range(REPEAT_GAP + 1):
        judge_next(db_url, pid, r0)
    judged_again = judge_next(db_url, pid, r0)
    with db.session_scope(db_url) as s:
        open_again = s.get(Assignment, next_assignment(s, pid, r0).assignment_id)
        repeated = {judged_again.pair_id, open_again.pair_id}
        assert judged_again.is_repeat and open_again.is_repeat and len(repeated) == 2
        claimed_before = dict(s.execute(select(Pair.id, Pair.n_claimed)).all())
    with db.session_scope(db_url) as s:
        import_dataset(s, s.get(Project, pid), [
            {"prompt": "one more question", "response_a": "yes", "response_b": "no"},
            {"prompt": f"question {N_PAIRS - 1}", "response_a": f"answer a{N_PAIRS - 1}",
             "response_b": f"answer b{N_PAIRS - 1}", "rater": "outsider", "choice": 1}])
    with db.session_scope(db_url) as s:
        claimed = dict(s.execute(select(Pair.id, Pair.n_claimed)).all())
    # The imported label is one more judgment of the last pair (r0 never judged it); the new pair has none.
    assert claimed == {**claimed_before, N_PAIRS: claimed_before[N_PAIRS] + 1, N_PAIRS + 1: 0}
    got = {judge_next(db_url, pid, r1).pair_id for _ in range(REPEAT_GAP + 1)}
    assert repeated <= got


def test_status_counts_what_the_overlap_counts(db_url, always_repeat):
    """Progress counts votes (the raters' and imported ones) on the pairs in the queue: a repeat or a judgment of a
    gold pair is a check, not a vote. Status counts those two apart."""
    pid, (r0,), _ = setup_project(db_url, n_pairs=N_PAIRS + 1, overlap=2, raters=1, repeat_rate=0.2, gold_rate=0.1)
    with db.session_scope(db_url) as s:
        s.get(Pair, 1).is_gold, s.get(Pair, 1).gold_choice = True, 1
    served = [judge_next(db_url, pid, r0) for _ in range(REPEAT_GAP + 3)]  # gold first, then as it comes
    n_repeats = sum(a.is_repeat for a in served)
    assert served[0].pair_id == 1 and n_repeats == 1
    with db.session_scope(db_url) as s:
        status = project_status(s, s.get(Project, pid))
    votes = len(served) - 1 - n_repeats
    assert (status.judgments, status.gold_judgments, status.repeat_judgments) == (votes, 1, 1)
    assert status.active_pairs == N_PAIRS and status.judgments_needed == 2 * N_PAIRS - votes
    assert status.progress == pytest.approx(votes / (2 * N_PAIRS))


def test_a_skipped_repeat_comes_back_on_undo_without_a_slot(db_url, always_repeat):
    """A repeat holds no overlap slot: undoing its skip reopens it and claims none, even on a full pair."""
    pid, (r0,), _ = setup_project(db_url, n_pairs=N_PAIRS, overlap=1, raters=1, repeat_rate=0.2)
    for _ in range(REPEAT_GAP + 1):
        judge_next(db_url, pid, r0)
    with db.session_scope(db_url) as s:
        served = next_assignment(s, pid, r0)
        assert s.get(Assignment, served.assignment_id).is_repeat
        skip(s, r0, served.assignment_id, "I judged this already")
        claimed_before = dict(s.execute(select(Pair.id, Pair.n_claimed)).all())
    with db.session_scope(db_url) as s:
        assert undo_last(s, r0, pid).assignment_id == served.assignment_id  # its pair is full (overlap 1)
        assert s.get(Assignment, served.assignment_id).status == "open"
        assert dict(s.execute(select(Pair.id, Pair.n_claimed)).all()) == claimed_before

"""Serving pairs and taking judgments, on SQLite and PostgreSQL, single-threaded and under concurrency."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from collect import assign, db
from collect.assign import (
    UNDO_SECONDS, expire_leases, flag_harmful, next_assignment, rater_summary, record_activity, reveal, review_flag,
    sensitive_cap_reached, skip, submit_judgment, undo_last,
)
from collect.errors import PermissionDenied, UserError
from collect.ingest import import_dataset
from collect.models import Assignment, AuditEvent, Judgment, Pair, utcnow
from collect.projects import ProjectSettings, add_rater, create_project, get_project


def setup_project(url: str, n_pairs: int = 6, overlap: int = 2, raters: int = 3, tags=None, **settings):
    """A project with n pairs and raters r0..r(n-1); returns (project id, rater ids, admin id)."""
    rows = [{"prompt": f"question {i}", "response_a": f"answer a{i}", "response_b": f"answer b{i}",
             "tags": (tags or {}).get(i, [])} for i in range(n_pairs)]
    with db.session_scope(url) as s:
        project = create_project(s, "p", ProjectSettings(overlap=overlap, rubric=[{"name": "helpful"}], **settings))
        import_dataset(s, project, rows)
        ids = [add_rater(s, f"r{i}", "pw", projects=[project]).id for i in range(raters)]
        admin = add_rater(s, "boss", "pw", role="admin").id
        return project.id, ids, admin


def judge(url, project_id, rater_id, choice=1, now=None):
    with db.session_scope(url) as s:
        served = next_assignment(s, project_id, rater_id, now=now)
        if served is None:
            return None
        if served.sensitive:  # shown first, as the rater app does when the rater asks
            reveal(s, rater_id, served.assignment_id, now=now)
        submit_judgment(s, rater_id, served.assignment_id, choice, client_token=uuid.uuid4().hex, now=now)
        return served


def test_overlap_and_never_twice(db_url):
    pid, raters, _ = setup_project(db_url, n_pairs=5, overlap=2, raters=3)
    seen = {r: [] for r in raters}
    for _ in range(10):
        for r in raters:
            served = judge(db_url, pid, r)
            if served:
                seen[r].append(served.assignment_id)
    with db.session_scope(db_url) as s:
        per_pair = Counter(s.scalars(select(Judgment.pair_id)))
        pairs_by_rater = Counter(s.execute(select(Judgment.rater_id, Judgment.pair_id)).all())
    assert sorted(per_pair.values()) == [2] * 5  # every pair exactly k, never more
    assert max(pairs_by_rater.values()) == 1  # no rater judged a pair twice
    assert judge(db_url, pid, raters[0]) is None  # nothing left


def test_choice_is_stored_relative_to_a_and_b(db_url):
    # 40 pairs: with 8 the sides-are-randomized check failed once in 128 runs (all 8 flips alike).
    pid, (r,), _ = setup_project(db_url, n_pairs=40, overlap=1, raters=1)
    for _ in range(40):
        with db.session_scope(db_url) as s:
            served = next_assignment(s, pid, r)
            # "left is much better" on screen
            submit_judgment(s, r, served.assignment_id, 2, client_token=uuid.uuid4().hex)
            assignment = s.get(Assignment, served.assignment_id)
            pair = s.get(Pair, assignment.pair_id)
            expected_left = pair.response_a.content if assignment.left_is_a else pair.response_b.content
            assert served.left == expected_left
    with db.session_scope(db_url) as s:
        rows = s.execute(select(Judgment.choice, Judgment.left_is_a)).all()
    assert all(choice == (2 if left_is_a else -2) for choice, left_is_a in rows)
    assert {left for _, left in rows} == {True, False}  # sides are randomized: all 40 flips alike is 1 in 2^39


def test_submission_is_idempotent_by_client_token(db_url):
    pid, (r,), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1)
    with db.session_scope(db_url) as s:
        served = next_assignment(s, pid, r)
        first = submit_judgment(s, r, served.assignment_id, 1, client_token="tok-1").id
    with db.session_scope(db_url) as s:
        again = submit_judgment(s, r, served.assignment_id, -2, client_token="tok-1")
        assert again.id == first and again.choice in (1, -1)
        assert s.scalar(select(func.count(Judgment.id))) == 1
        with pytest.raises(UserError, match="already submitted"):
            submit_judgment(s, r, served.assignment_id, 1, client_token="tok-2")


def test_expired_lease_returns_the_pair_to_the_pool(db_url):
    pid, (r0, r1), _ = setup_project(db_url, n_pairs=1, overlap=1, raters=2, lease_seconds=60)
    start = utcnow()
    with db.session_scope(db_url) as s:
        first = next_assignment(s, pid, r0, now=start)
        assert first is not None
        assert next_assignment(s, pid, r1, now=start) is None  # the only slot is leased
    with db.session_scope(db_url) as s:
        later = next_assignment(s, pid, r1, now=start + timedelta(seconds=61))
        assert later is not None  # the lease ran out: r1 gets it
        submit_judgment(s, r1, later.assignment_id, 1, client_token="late-ok")
    with db.session_scope(db_url) as s, pytest.raises(UserError, match="lease"):
        submit_judgment(s, r0, first.assignment_id, 1, client_token="too-late", now=start + timedelta(seconds=62))


def test_a_late_judgment_counts_only_while_the_rater_has_not_moved_on(db_url):
    """Past its lease an item may still be judged if the pair has room, but not once the rater holds another
    item: that judgment comes from a screen they left (a second tab, a retrying client)."""
    pid, (r0,), _ = setup_project(db_url, n_pairs=3, overlap=1, raters=1, lease_seconds=60)
    start = utcnow()
    with db.session_scope(db_url) as s:
        first = next_assignment(s, pid, r0, now=start)
        expire_leases(s, pid, now=start + timedelta(seconds=61))
        submit_judgment(s, r0, first.assignment_id, 1, client_token="late-ok", now=start + timedelta(seconds=62))
        second = next_assignment(s, pid, r0, now=start + timedelta(seconds=63))
        # An undo gives the second item back and opens the first again: the rater has moved on, back to it.
        assert undo_last(s, r0, pid, now=start + timedelta(seconds=64)).assignment_id == first.assignment_id
        with pytest.raises(UserError, match="moved on to another item"):
            submit_judgment(s, r0, second.assignment_id, 1, client_token="stale", now=start + timedelta(seconds=65))
        assert s.scalar(select(func.count(Judgment.id))) == 0


def test_a_pair_given_back_by_a_lease_or_an_undo_comes_back_to_its_rater(db_url):
    """The only rater of a project: a pair whose lease ran out on them, or that an undo gave back, is theirs to
    judge later (the same assignment, opened again); kept from them for good, the project never finished."""
    pid, (r0,), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1, lease_seconds=60)
    start = utcnow()
    with db.session_scope(db_url) as s:
        first = next_assignment(s, pid, r0, now=start)
        expire_leases(s, pid, now=start + timedelta(seconds=61))
        again = next_assignment(s, pid, r0, now=start + timedelta(seconds=62))
        assert again.assignment_id == first.assignment_id and again.left == first.left  # as first served
        skip(s, r0, first.assignment_id, "not now", now=start + timedelta(seconds=63))
        second = next_assignment(s, pid, r0, now=start + timedelta(seconds=64))
        undo_last(s, r0, pid, now=start + timedelta(seconds=65))  # the skip: the second item is given back
        submit_judgment(s, r0, first.assignment_id, 1, client_token="a", now=start + timedelta(seconds=66))
        back = next_assignment(s, pid, r0, now=start + timedelta(seconds=67))
        assert back is not None and back.assignment_id == second.assignment_id
        submit_judgment(s, r0, back.assignment_id, -1, client_token="b", now=start + timedelta(seconds=68))
        assert next_assignment(s, pid, r0, now=start + timedelta(seconds=69)) is None
        assert s.scalar(select(func.count(Judgment.id))) == 2
        assert s.scalar(select(func.sum(Pair.n_claimed))) == 2  # each pair's one slot, claimed once


def test_undo_skip_and_flag(db_url):
    pid, (r0, r1), admin = setup_project(db_url, n_pairs=3, overlap=1, raters=2)
    served = judge(db_url, pid, r0)
    with db.session_scope(db_url) as s:
        again = undo_last(s, r0, pid)
        assert again.assignment_id == served.assignment_id
        assert s.scalar(select(func.count(Judgment.id))) == 0
    with db.session_scope(db_url) as s:
        assert next_assignment(s, pid, r0).assignment_id == served.assignment_id  # served again first
        skip(s, r0, served.assignment_id, "not my field")
    with db.session_scope(db_url) as s:
        other = next_assignment(s, pid, r0)
        flag_harmful(s, r0, other.assignment_id, "graphic content")
        flagged = s.get(Assignment, other.assignment_id).pair_id
    with db.session_scope(db_url) as s:
        # r1 can get the skipped pair but never the flagged one
        got = set()
        while (x := next_assignment(s, pid, r1)) is not None:
            got.add(s.get(Assignment, x.assignment_id).pair_id)
            submit_judgment(s, r1, x.assignment_id, 0, client_token=uuid.uuid4().hex)
        assert flagged not in got and len(got) == 2
        with pytest.raises(PermissionDenied):
            review_flag(s, r1, flagged, keep=True)
        review_flag(s, admin, flagged, keep=True)
    assert judge(db_url, pid, r1) is not None


def test_a_flagged_pair_leaves_every_queue_at_once(db_url):
    pid, (r0, r1, r2), admin = setup_project(db_url, n_pairs=2, overlap=3, raters=3)
    with db.session_scope(db_url) as s:
        held = {r: next_assignment(s, pid, r).assignment_id for r in (r0, r1, r2)}
        pair_id = s.get(Assignment, held[r0]).pair_id
        assert {s.get(Assignment, a).pair_id for a in held.values()} == {pair_id}  # all three hold the same pair
    with db.session_scope(db_url) as s:
        flag_harmful(s, r0, held[r0], "graphic content")
    with db.session_scope(db_url) as s:
        assert [s.get(Assignment, held[r]).status for r in (r1, r2)] == ["expired", "expired"]
        assert s.get(Pair, pair_id).n_claimed == 0  # every slot given back
        served = next_assignment(s, pid, r1)
        assert s.get(Assignment, served.assignment_id).pair_id != pair_id  # r1 moves on to the other pair
        with pytest.raises(UserError, match="pulled from the queue"):
            submit_judgment(s, r2, held[r2], 1, client_token="late")
        assert s.scalar(select(func.count(Judgment.id))) == 0


def test_an_open_assignment_on_a_pulled_pair_is_not_served(db_url):
    """A pair retired (or flagged) while a rater held it: their next request skips it and gives its slot back."""
    pid, (r0,), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1)
    with db.session_scope(db_url) as s:
        held = next_assignment(s, pid, r0).assignment_id
        pulled = s.get(Assignment, held).pair_id
        s.execute(update(Pair).where(Pair.id == pulled).values(status="retired"))
    with db.session_scope(db_url) as s:
        served = next_assignment(s, pid, r0)
        assert served.assignment_id != held and s.get(Assignment, served.assignment_id).pair_id != pulled
        assert s.get(Assignment, held).status == "expired" and s.get(Pair, pulled).n_claimed == 0
        with pytest.raises(UserError, match="pulled from the queue"):
            submit_judgment(s, r0, held, 1, client_token="late")


def test_undo_of_a_judgment_on_a_pulled_pair_is_refused(db_url):
    pid, (r0,), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1)
    served = judge(db_url, pid, r0)
    with db.session_scope(db_url) as s:
        s.execute(update(Pair).where(Pair.id == s.get(Assignment, served.assignment_id).pair_id)
                  .values(status="flagged"))
    with db.session_scope(db_url) as s, pytest.raises(UserError, match="pulled from the queue"):
        undo_last(s, r0, pid)


def test_overlapping_submissions_with_one_token_return_one_judgment(db_url):
    """A retried request racing its original (same client_token): both get the same judgment, no error."""
    pid, (r,), _ = setup_project(db_url, n_pairs=1, overlap=1, raters=1)
    with db.session_scope(db_url) as s:
        assignment_id = next_assignment(s, pid, r).assignment_id
    first_written = threading.Event()
    ids: dict[str, int] = {}
    errors: list[BaseException] = []

    def submit(name: str) -> None:
        try:
            if name == "second":
                first_written.wait(30)
            with db.session_scope(db_url) as s:
                ids[name] = submit_judgment(s, r, assignment_id, 1, client_token="twin").id
                if name == "first":
                    first_written.set()
                    wait_until_another_transaction_waits(db_url)  # commit only once the twin is blocked on us
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            first_written.set()

    threads = [threading.Thread(target=submit, args=(name,)) for name in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert ids["first"] == ids["second"]
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count(Judgment.id))) == 1


def wait_until_another_transaction_waits(url: str, timeout: float = 10.0,
                                          while_running: threading.Thread | None = None) -> None:
    """On PostgreSQL, until some session waits for a lock (the twin, on the assignment row), or `while_running` has
    ended. SQLite serializes whole transactions, so the twin cannot get that far: give it a moment to queue up."""
    if not url.startswith("postgresql"):
        time.sleep(0.3)
        return
    deadline = time.monotonic() + timeout
    with db.get_engine(url).connect() as conn:
        while time.monotonic() < deadline and (while_running is None or while_running.is_alive()):
            if conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar():
                return
            conn.rollback()
            time.sleep(0.02)


def test_undo_window_and_foreign_assignments(db_url):
    pid, (r0, r1), _ = setup_project(db_url, n_pairs=2, overlap=2, raters=2)
    long_ago = utcnow() - timedelta(minutes=5)
    served = judge(db_url, pid, r0, now=long_ago)
    with db.session_scope(db_url) as s:
        with pytest.raises(UserError, match="nothing to undo"):
            undo_last(s, r0, pid)
        with pytest.raises(PermissionDenied):
            submit_judgment(s, r1, served.assignment_id, 1, client_token="steal")
        with pytest.raises(PermissionDenied):
            record_activity(s, r1, served.assignment_id)


def test_an_undone_judgments_id_is_never_given_to_another(db_url):
    """The API hands judgment ids to clients: after an undo, the next judgment must not take the undone one's id
    (SQLite, without AUTOINCREMENT, reuses the largest rowid once its row is deleted)."""
    pid, (r0,), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1)
    with db.session_scope(db_url) as s:
        served = next_assignment(s, pid, r0)
        undone = submit_judgment(s, r0, served.assignment_id, 1, client_token="first").id
    with db.session_scope(db_url) as s:
        assert undo_last(s, r0, pid).assignment_id == served.assignment_id
        assert s.get(Judgment, undone) is None
    with db.session_scope(db_url) as s:
        again = submit_judgment(s, r0, served.assignment_id, -1, client_token="second").id
    assert again > undone
    with db.session_scope(db_url) as s:
        assert s.get(Judgment, undone) is None and s.get(Judgment, again).client_token == "second"
        # The audit trail names the judgment taken back by the id its client was given.
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "judgment.undo"))
        assert event.details["judgment_id"] == undone


def pair_of(s, assignment_id: int) -> Pair:
    return s.get(Assignment, assignment_id).pair


def test_undo_takes_back_the_latest_action_a_skip_before_an_older_judgment(db_url):
    """Judge, skip, undo: the skip is undone (the skipped pair back on screen, its slot claimed again, the pair
    served meanwhile back in the pool), not the judgment before it. A second undo then takes back the judgment."""
    pid, (r0,), _ = setup_project(db_url, n_pairs=3, overlap=1, raters=1)
    t0 = utcnow()
    judged = judge(db_url, pid, r0, now=t0)
    with db.session_scope(db_url) as s:
        skipped = next_assignment(s, pid, r0, now=t0 + timedelta(seconds=5))
        skip(s, r0, skipped.assignment_id, "not my field", now=t0 + timedelta(seconds=10))
        meanwhile = next_assignment(s, pid, r0, now=t0 + timedelta(seconds=10))
    with db.session_scope(db_url) as s:
        again = undo_last(s, r0, pid, now=t0 + timedelta(seconds=20))
        assert again.assignment_id == skipped.assignment_id
        undone = s.get(Assignment, skipped.assignment_id)
        assert undone.status == "open" and undone.skip_reason is None
        assert undone.lease_expires_at > t0 + timedelta(seconds=20)
        assert pair_of(s, skipped.assignment_id).n_claimed == 1  # its slot is the rater's again
        assert s.get(Assignment, meanwhile.assignment_id).status == "expired"
        assert pair_of(s, meanwhile.assignment_id).n_claimed == 0  # back in the pool
        assert s.scalar(select(func.count(Judgment.id))) == 1  # the older judgment stands
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "skip.undo")).all()
        assert event.actor_id == r0 and event.details["reason"] == "not my field"
    with db.session_scope(db_url) as s:
        assert next_assignment(s, pid, r0, now=t0 + timedelta(seconds=21)).assignment_id == skipped.assignment_id
        assert undo_last(s, r0, pid, now=t0 + timedelta(seconds=25)).assignment_id == judged.assignment_id
        assert s.scalar(select(func.count(Judgment.id))) == 0
        assert s.get(Assignment, skipped.assignment_id).status == "expired"  # the open one went back again


def test_undo_of_a_skip_whose_slot_has_gone_is_refused_and_changes_nothing(db_url):
    pid, (r0, r1), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=2)
    with db.session_scope(db_url) as s:
        skipped = next_assignment(s, pid, r0)
        skip(s, r0, skipped.assignment_id, "not my field")
        held = next_assignment(s, pid, r0)
        taken = next_assignment(s, pid, r1)  # the skipped pair's one slot, meanwhile
        assert pair_of(s, taken.assignment_id).id == pair_of(s, skipped.assignment_id).id
    with db.session_scope(db_url) as s, pytest.raises(UserError, match="gone to other raters"):
        undo_last(s, r0, pid)
    with db.session_scope(db_url) as s:
        assert s.get(Assignment, skipped.assignment_id).status == "skipped"
        assert s.get(Assignment, held.assignment_id).status == "open"  # still the rater's
        assert pair_of(s, skipped.assignment_id).n_claimed == 1
        assert not s.scalars(select(AuditEvent).where(AuditEvent.action == "skip.undo")).all()


def test_undo_of_a_skip_on_a_pulled_pair_or_past_the_window_is_refused(db_url):
    pid, (r0,), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1)
    long_ago = utcnow() - timedelta(seconds=UNDO_SECONDS + 5)
    with db.session_scope(db_url) as s:
        skipped = next_assignment(s, pid, r0, now=long_ago)
        skip(s, r0, skipped.assignment_id, "not my field", now=long_ago)
    with db.session_scope(db_url) as s, pytest.raises(UserError, match="nothing to undo"):
        undo_last(s, r0, pid)
    with db.session_scope(db_url) as s:
        other = next_assignment(s, pid, r0)
        skip(s, r0, other.assignment_id, "not my field")
        s.execute(update(Pair).where(Pair.id == pair_of(s, other.assignment_id).id).values(status="retired"))
    with db.session_scope(db_url) as s, pytest.raises(UserError, match="pulled from the queue"):
        undo_last(s, r0, pid)
    with db.session_scope(db_url) as s:
        assert s.get(Assignment, other.assignment_id).status == "skipped"


def test_undo_after_a_flag_is_refused_rather_than_reaching_back_to_a_judgment(db_url):
    pid, (r0,), _ = setup_project(db_url, n_pairs=3, overlap=1, raters=1)
    t0 = utcnow()
    judge(db_url, pid, r0, now=t0)
    with db.session_scope(db_url) as s:
        flagged = next_assignment(s, pid, r0, now=t0 + timedelta(seconds=5))
        flag_harmful(s, r0, flagged.assignment_id, "graphic content", now=t0 + timedelta(seconds=10))
    with db.session_scope(db_url) as s, pytest.raises(UserError, match="flagged this pair as harmful"):
        undo_last(s, r0, pid, now=t0 + timedelta(seconds=20))
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count(Judgment.id))) == 1  # the judgment before the flag stands
        assert pair_of(s, flagged.assignment_id).status == "flagged"


def test_a_gold_pair_skipped_comes_back_on_undo_as_gold_pairs_are_served(db_url):
    """Gold pairs have no overlap cap when served, nor when a skip of one is undone."""
    pid, (r0, r1), _ = setup_project(db_url, n_pairs=1, overlap=1, raters=2)
    with db.session_scope(db_url) as s:
        s.execute(update(Pair).values(is_gold=True, gold_choice=1))
        s.execute(update(assign.Project).where(assign.Project.id == pid).values(gold_rate=1.0))
    with db.session_scope(db_url) as s:
        skipped = next_assignment(s, pid, r0)
        skip(s, r0, skipped.assignment_id, "not my field")
        next_assignment(s, pid, r1)  # the gold pair, past the overlap of 1
    with db.session_scope(db_url) as s:
        assert undo_last(s, r0, pid).assignment_id == skipped.assignment_id
        assert pair_of(s, skipped.assignment_id).n_claimed == 2


def test_non_members_get_nothing(db_url):
    pid, _, _ = setup_project(db_url)
    with db.session_scope(db_url) as s:
        outsider = add_rater(s, "outsider", "pw").id
    with db.session_scope(db_url) as s, pytest.raises(PermissionDenied):
        next_assignment(s, pid, outsider)


def test_sensitive_items_need_opt_in_and_respect_the_daily_cap(db_url):
    tags = {0: ["sensitive:violence"], 1: ["sensitive:violence"], 2: ["sensitive:violence", "sensitive:self-harm"]}
    pid, (plain,), _ = setup_project(db_url, n_pairs=5, overlap=1, raters=1, tags=tags, sensitive_daily_cap=1)
    with db.session_scope(db_url) as s:
        brave = add_rater(s, "brave", "pw", sensitive_opt_in=["violence"], projects=[get_project(s, pid)]).id
    served = [judge(db_url, pid, plain) for _ in range(5)]
    assert [x is not None for x in served] == [True, True, False, False, False]
    assert all(not x.sensitive for x in served if x)
    # brave sees sensitive items, one a day, never the self-harm one
    first = judge(db_url, pid, brave)
    assert first.sensitive == ["violence"]
    assert judge(db_url, pid, brave) is None


def test_a_sensitive_item_declined_unseen_keeps_its_place_in_the_daily_cap(db_url):
    """The cap limits exposure: an item skipped behind its content warning, never revealed, does not count."""
    tags = {i: ["sensitive:violence"] for i in range(3)}
    pid, _, _ = setup_project(db_url, n_pairs=3, overlap=1, raters=0, tags=tags, sensitive_daily_cap=1)
    with db.session_scope(db_url) as s:
        brave = add_rater(s, "brave", "pw", sensitive_opt_in=["violence"], projects=[get_project(s, pid)]).id
    with db.session_scope(db_url) as s:
        declined = next_assignment(s, pid, brave)
        skip(s, brave, declined.assignment_id, "I'd rather not see this content")
    seen = judge(db_url, pid, brave)  # revealed, then judged: the one of today
    assert seen.sensitive == ["violence"] and seen.assignment_id != declined.assignment_id
    assert judge(db_url, pid, brave) is None
    with db.session_scope(db_url) as s:
        assert sensitive_cap_reached(s, pid, brave) == 1


def test_a_sensitive_item_is_judged_only_once_revealed(db_url):
    pid, _, _ = setup_project(db_url, n_pairs=1, overlap=1, raters=0, tags={0: ["sensitive:violence"]})
    with db.session_scope(db_url) as s:
        brave = add_rater(s, "brave", "pw", sensitive_opt_in=["violence"], projects=[get_project(s, pid)]).id
    with db.session_scope(db_url) as s:
        served = next_assignment(s, pid, brave)
        with pytest.raises(UserError, match="show the content before judging it, or skip it"):
            submit_judgment(s, brave, served.assignment_id, 1, client_token="unseen")
    with db.session_scope(db_url) as s:
        reveal(s, brave, served.assignment_id)
        submit_judgment(s, brave, served.assignment_id, 1, client_token="seen")
        assert s.get(Assignment, served.assignment_id).status == "submitted"


def test_revealing_past_the_daily_cap_is_refused(db_url):
    """The cap counts across projects: an item served unrevealed in one project, then the day's one sensitive item
    seen in another, stays hidden (to be skipped)."""
    pid, _, _ = setup_project(db_url, n_pairs=1, overlap=1, raters=0, tags={0: ["sensitive:violence"]},
                              sensitive_daily_cap=1)
    with db.session_scope(db_url) as s:
        other = create_project(s, "other", ProjectSettings(overlap=1, sensitive_daily_cap=1))
        import_dataset(s, other, [{"prompt": "q", "response_a": "a", "response_b": "b",
                                   "tags": ["sensitive:violence"]}])
        brave = add_rater(s, "brave", "pw", sensitive_opt_in=["violence"],
                          projects=[get_project(s, pid), other]).id
        other_id = other.id
    with db.session_scope(db_url) as s:
        held = next_assignment(s, pid, brave)  # served, not revealed: nothing seen yet
    assert judge(db_url, other_id, brave).sensitive == ["violence"]  # the day's one, in the other project
    with db.session_scope(db_url) as s, pytest.raises(UserError, match="today's limit of 1 sensitive items"):
        reveal(s, brave, held.assignment_id)
    with db.session_scope(db_url) as s:
        assert s.get(Assignment, held.assignment_id).revealed_at is None
        skip(s, brave, held.assignment_id, "I'd rather not see this content")


def add_doctor(url: str, project_id: int) -> int:
    with db.session_scope(url) as s:
        return add_rater(s, "doc", "pw", expertise=["domain:medicine"], projects=[get_project(s, project_id)]).id


def asked(served) -> str:
    return served.conversation[0]["content"]


# The medicine prompts get the highest pair ids: served in id order they would come last, so the tests fail
# unless routing puts them first for the expert.
MEDICINE = {i: ["domain:medicine"] for i in (3, 4, 5)}


def test_experts_only_routing(db_url):
    pid, (novice,), _ = setup_project(db_url, n_pairs=6, overlap=1, raters=1, tags=MEDICINE, routing="experts_only")
    doctor = add_doctor(db_url, pid)
    assert asked(judge(db_url, pid, doctor)) in {"question 3", "question 4", "question 5"}  # own domain first
    got = [judge(db_url, pid, novice) for _ in range(6)]
    assert sorted(asked(x) for x in got if x) == ["question 0", "question 1", "question 2"]  # never medicine


def test_experts_first_routing(db_url):
    pid, (novice,), _ = setup_project(db_url, n_pairs=6, overlap=2, raters=1, tags=MEDICINE, routing="experts_first")
    doctor = add_doctor(db_url, pid)
    assert {asked(judge(db_url, pid, doctor)) for _ in range(3)} == {"question 3", "question 4", "question 5"}
    # The medicine pairs are now the closest to k, which alone would serve them first: untagged come first anyway.
    got = [asked(judge(db_url, pid, novice)) for _ in range(6)]
    assert set(got[:3]) == {"question 0", "question 1", "question 2"}
    assert set(got[3:]) == {"question 3", "question 4", "question 5"}  # and then the domain ones, not never
    assert judge(db_url, pid, novice) is None


def test_a_pair_the_rater_judged_in_an_import_is_not_served_to_them(db_url):
    pid, (r0, r1), _ = setup_project(db_url, n_pairs=2, overlap=3, raters=2)
    with db.session_scope(db_url) as s:
        result = import_dataset(s, get_project(s, pid), [
            {"prompt": "question 0", "response_a": "answer a0", "response_b": "answer b0", "rater": "r0", "choice": 1}])
        assert (result.pairs, result.judgments, result.raters) == (0, 1, 0)  # r0's judgment, on an existing pair
    assert asked(judge(db_url, pid, r0)) == "question 1"
    assert judge(db_url, pid, r0) is None
    assert {asked(judge(db_url, pid, r1)) for _ in range(2)} == {"question 0", "question 1"}


def test_active_time_is_measured_on_the_server(db_url):
    pid, (r,), _ = setup_project(db_url, n_pairs=1, overlap=1, raters=1, idle_seconds=30, pay_rate=36.0)
    t0 = utcnow() - timedelta(seconds=100)
    with db.session_scope(db_url) as s:
        served = next_assignment(s, pid, r, now=t0)
        record_activity(s, r, served.assignment_id, now=t0 + timedelta(seconds=10))  # +10
        record_activity(s, r, served.assignment_id, now=t0 + timedelta(seconds=70))  # idle gap: +30 only
        j = submit_judgment(s, r, served.assignment_id, 1, client_token="t", now=t0 + timedelta(seconds=75))  # +5
        assert j.active_seconds == pytest.approx(45)
        summary = rater_summary(s, r, pid)
        assert summary.judgments_total == 1
        assert summary.earnings == pytest.approx(45 / 3600 * 36.0, abs=0.01)


def test_active_time_never_exceeds_the_wall_time_even_by_a_rounding_error(sqlite_url):
    # An action every 0.1 s: three float gaps of 0.1 add up to 0.30000000000000004, a hair over the 0.3 s
    # between serving and submitting. Active time is capped at the wall time, so payroll never pays more.
    pid, (r,), _ = setup_project(sqlite_url, n_pairs=1, overlap=1, raters=1, idle_seconds=30)
    t0 = utcnow() - timedelta(seconds=100)
    with db.session_scope(sqlite_url) as s:
        served = next_assignment(s, pid, r, now=t0)
        for k in (1, 2):
            record_activity(s, r, served.assignment_id, now=t0 + timedelta(microseconds=k * 100_000))
        j = submit_judgment(s, r, served.assignment_id, 1, client_token="t", now=t0 + timedelta(microseconds=300_000))
        assert 0.1 + 0.1 + 0.1 > 0.3  # the rounding error this guards against
        assert j.active_seconds == 0.3


def test_gold_pairs_are_mixed_in_and_scored(db_url):
    pid, (r,), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1, gold_rate=1.0)
    gold_rows = [{"prompt": f"gold {i}", "response_a": f"good {i}", "response_b": f"bad {i}", "gold": "A>B"}
                 for i in range(5)]
    with db.session_scope(db_url) as s:
        import_dataset(s, get_project(s, pid), gold_rows)
    for _ in range(7):
        with db.session_scope(db_url) as s:
            served = next_assignment(s, pid, r)
            left_good = served.left.startswith("good")
            submit_judgment(s, r, served.assignment_id, 1 if left_good else -1, client_token=uuid.uuid4().hex)
    with db.session_scope(db_url) as s:
        assert rater_summary(s, r, pid).gold_judged == 0  # judged today: not shown until tomorrow
        summary = rater_summary(s, r, pid, now=utcnow() + timedelta(days=1))
        assert summary.gold_judged == 5 and summary.gold_accuracy == 1.0


def test_gold_pairs_left_follow_when_the_ordinary_ones_run_out(db_url, monkeypatch):
    """The gold coin fails every time: once the ordinary pairs are judged, the gold ones left come next, then None.

    Were None served first, the gold pairs would come after a "nothing left" (on a reload): a giveaway.
    """
    pid, (r,), _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1, gold_rate=0.01)
    gold_rows = [{"prompt": f"gold {i}", "response_a": f"good {i}", "response_b": f"bad {i}", "gold": "A>B"}
                 for i in range(2)]
    with db.session_scope(db_url) as s:
        import_dataset(s, get_project(s, pid), gold_rows)
    monkeypatch.setattr(assign.random, "random", lambda: 0.99)  # the coin for gold never comes up
    served = [judge(db_url, pid, r) for _ in range(5)]
    prompts = [x.conversation[-1]["content"] if x else None for x in served]
    assert prompts[:2] == ["question 0", "question 1"]  # ordinary pairs first
    assert set(prompts[2:]) == {"gold 0", "gold 1", None} and prompts[4] is None
    with db.session_scope(db_url) as s:
        assert next_assignment(s, pid, r) is None  # and stays None: every pair judged once


def test_todays_gold_judgments_do_not_move_the_gold_numbers(db_url):
    """The rater's own page must not tell them which of today's items were gold."""
    pid, (r,), _ = setup_project(db_url, n_pairs=1, overlap=1, raters=1, gold_rate=1.0)
    gold_rows = [{"prompt": f"gold {i}", "response_a": f"good {i}", "response_b": f"bad {i}", "gold": "A>B"}
                 for i in range(6)]
    with db.session_scope(db_url) as s:
        import_dataset(s, get_project(s, pid), gold_rows)

    def judge_gold(right: bool, now=None) -> None:
        with db.session_scope(db_url) as s:
            served = next_assignment(s, pid, r, now=now)
            assert served.left.startswith(("good", "bad"))
            good_side = 1 if served.left.startswith("good") else -1
            submit_judgment(s, r, served.assignment_id, good_side if right else -good_side,
                            client_token=uuid.uuid4().hex, now=now)

    yesterday = utcnow() - timedelta(days=1)
    for _ in range(5):
        judge_gold(True, now=yesterday)
    with db.session_scope(db_url) as s:
        before = rater_summary(s, r, pid)
    assert (before.gold_judged, before.gold_accuracy) == (5, 1.0)
    judge_gold(False)  # today, wrong
    with db.session_scope(db_url) as s:
        after = rater_summary(s, r, pid)
        tomorrow = rater_summary(s, r, pid, now=utcnow() + timedelta(days=1))
    assert (after.gold_judged, after.gold_accuracy) == (5, 1.0)
    assert after.judgments_today == before.judgments_today + 1  # the judgment itself does count today
    assert (tomorrow.gold_judged, tomorrow.gold_accuracy) == (6, pytest.approx(5 / 6))


def test_many_threads_one_database(db_url):
    """20 raters at once: every pair ends with exactly k judgments from k different raters."""
    n_pairs, overlap, n_raters = 30, 3, 20
    pid, raters, _ = setup_project(db_url, n_pairs=n_pairs, overlap=overlap, raters=n_raters)
    errors: list[BaseException] = []
    acknowledged: list[int] = []
    lock = threading.Lock()

    def work(rater_id: int) -> None:
        try:
            while True:
                with db.session_scope(db_url) as s:
                    served = next_assignment(s, pid, rater_id)
                    if served is None:
                        return
                    judgment = submit_judgment(s, rater_id, served.assignment_id, 1, client_token=uuid.uuid4().hex)
                    judgment_id = judgment.id
                with lock:
                    acknowledged.append(judgment_id)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in raters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    with db.session_scope(db_url) as s:
        rows = s.execute(select(Judgment.id, Judgment.pair_id, Judgment.rater_id)).all()
        claimed = list(s.scalars(select(Pair.n_claimed)))
    assert sorted(j for j, _, _ in rows) == sorted(acknowledged)  # none lost, none extra
    per_pair = Counter(p for _, p, _ in rows)
    assert len(per_pair) == n_pairs and set(per_pair.values()) == {overlap}
    assert len({(p, r) for _, p, r in rows}) == len(rows)  # k different raters per pair
    assert claimed == [overlap] * n_pairs


def test_an_import_keeps_a_slot_claimed_while_it_runs(db_url):
    """A claim committed while an import runs keeps its slot, on pairs the import does not touch too. (Import recounted
    every pair of the project from subqueries, which on PostgreSQL read the pairs as they were when the statement
    began: the claim was written over, and its slot went to a second rater, three judgments for k = 2.)"""
    pid, (r0, r1), _ = setup_project(db_url, n_pairs=1, overlap=2, raters=2)
    with db.session_scope(db_url) as s:  # an earlier import's label: the pair has one slot left
        import_dataset(s, get_project(s, pid), [{"prompt": "question 0", "response_a": "answer a0",
                                                 "response_b": "answer b0", "rater": "outsider", "choice": 1}])
    claimed, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            with db.session_scope(db_url) as s:
                assert next_assignment(s, pid, r0) is not None  # the pair's row stays locked until the commit
                claimed.set()
                release.wait(30)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            claimed.set()

    def import_another_pair() -> None:
        try:
            with db.session_scope(db_url) as s:
                rows = [{"prompt": "question 1", "response_a": "a1", "response_b": "b1"}]
                import_dataset(s, get_project(s, pid), rows)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    claimer = threading.Thread(target=claim)
    claimer.start()
    claimed.wait(30)
    importer = threading.Thread(target=import_another_pair)
    importer.start()
    wait_until_another_transaction_waits(db_url, while_running=importer)  # the import, on the claimed pair's row
    release.set()
    for t in (claimer, importer):
        t.join(timeout=60)
    assert not errors, errors
    with db.session_scope(db_url) as s:
        assert s.scalar(select(Pair.n_claimed).where(Pair.id == 1)) == 2  # the label and r0's open assignment
    assert asked(judge(db_url, pid, r1)) == "question 1"  # not question 0 a third time
    judge(db_url, pid, r0)  # r0 submits the item they hold
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count(Judgment.id)).where(Judgment.pair_id == 1)) == 2


def test_parallel_requests_of_one_rater_open_one_item_within_the_sensitive_cap(db_url, monkeypatch):
    """Eight `next` calls of one rater at once (eight tabs, a retrying client) get the same one item. Each call reads
    the rater's open item and today's sensitive count before it claims: on PostgreSQL, without a lock per rater, all
    eight read "none open, one sensitive today" and each opened its own item, past a daily cap of 2."""
    tags = {i: ["sensitive:violence"] for i in range(8)}
    pid, _, _ = setup_project(db_url, n_pairs=8, overlap=1, raters=0, tags=tags, sensitive_daily_cap=2)
    with db.session_scope(db_url) as s:
        brave = add_rater(s, "brave", "pw", sensitive_opt_in=["violence"], projects=[get_project(s, pid)]).id
    assert judge(db_url, pid, brave).sensitive == ["violence"]  # one today: one more allowed
    # Every call waits (up to 2 s) after reading its open item until the others have read theirs: the calls interleave
    # as they would under load, wherever the database lets them.
    all_read = threading.Barrier(8)
    current_assignment = assign._current_assignment

    def read_then_wait(*args):
        found = current_assignment(*args)
        try:
            all_read.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass
        return found

    monkeypatch.setattr(assign, "_current_assignment", read_then_wait)
    served: list[int | None] = []
    errors: list[BaseException] = []

    def next_item() -> None:
        try:
            with db.session_scope(db_url) as s:
                item = next_assignment(s, pid, brave)
                served.append(item.assignment_id if item else None)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=next_item) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    with db.session_scope(db_url) as s:
        opened = s.scalars(select(Assignment.id).where(Assignment.rater_id == brave, Assignment.status == "open")).all()
        sensitive_today = s.scalar(select(func.count(Assignment.id)).where(Assignment.rater_id == brave))
    assert len(opened) == 1 and served == opened * 8  # one item, served to every call
    assert sensitive_today == 2  # the cap

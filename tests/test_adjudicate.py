"""The disagreement queue and adjudication: which pairs are queued, and what an adjudication does."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from collect import db
from collect.adjudicate import QueueConfig, adjudicate, disagreement_queue, flagged_pairs, pair_detail
from collect.assign import flag_harmful, next_assignment, review_flag, skip
from collect.errors import PermissionDenied, UserError
from collect.export import export_project
from collect.ingest import import_dataset
from collect.judgments import judgments_frame
from collect.models import Assignment, AuditEvent, Judgment, Pair, utcnow
from collect.projects import ProjectSettings, add_rater, create_project, get_project
from collect.status import project_status

# pair name -> votes (rater, choice relative to A/B). "gold*" pairs are gold with known answer A>B (+1).
VOTES = {
    "unanimous": [("r1", 2), ("r2", 1), ("r3", 1)],  # 3-0 in direction: not split
    "two_one": [("r1", 1), ("r2", 1), ("r3", -1)],  # 2-1: split
    "one_one": [("r1", 1), ("r2", -2)],  # 1-1: split
    "single": [("r1", 1)],  # one vote: nothing to disagree with
    "spam_alone": [("spam", -2)],  # only a flagged rater voted: they decided it
    "spam_tips": [("spam", 1), ("r2", 0)],  # 1-1 A vs tie, the strength tips it to A; without spam: tie
    "spam_agrees": [("spam", 1), ("r1", 1), ("r2", 2), ("r3", 1)],  # 4-0: spam changes nothing
}


def build(url: str) -> tuple[int, dict[str, int], int, int]:
    """A project with the VOTES pairs and six gold pairs the "spam" rater gets wrong (so they are flagged).

    Returns (project id, pair ids by name, admin id, id of a plain rater)."""
    rows = []
    for name, votes in VOTES.items():
        for rater, choice in votes:
            rows.append({"prompt": f"prompt {name}", "response_a": f"A {name}", "response_b": f"B {name}",
                         "model_a": "m1", "model_b": "m2", "rater": rater, "choice": choice,
                         "rationale": f"{rater} on {name}"})
    for i in range(6):
        gold = {"prompt": f"gold {i}", "response_a": f"good {i}", "response_b": f"bad {i}", "gold": 1}
        rows.append({**gold, "rater": "spam", "choice": -1})
        rows.append({**gold, "rater": "r1", "choice": 1})
        rows.append({**gold, "rater": "r2", "choice": -1 if i == 0 else 1})  # a split gold pair: never queued
    with db.session_scope(url) as s:
        project = create_project(s, "adj", ProjectSettings(overlap=3))
        import_dataset(s, project, rows)
        admin = add_rater(s, "boss", "pw", role="admin").id
        plain = add_rater(s, "plain", "pw", projects=[project]).id
        pairs = {p.prompt.conversation[0]["content"].removeprefix("prompt "): p.id
                 for p in s.scalars(select(Pair).where(Pair.project_id == project.id))}
        return project.id, pairs, admin, plain


def queue(url: str, project_id: int, config: QueueConfig | None = None):
    with db.session_scope(url) as s:
        return disagreement_queue(s, get_project(s, project_id), config)


def test_queue_holds_splits_and_pairs_a_flagged_rater_decided(db_url):
    pid, pairs, _, _ = build(db_url)
    table = queue(db_url, pid)
    reasons = dict(zip(table["pair_id"], table["reason"]))
    by_name = {name: reasons.get(pid_) for name, pid_ in pairs.items()}
    assert by_name["two_one"] == "split"
    assert by_name["one_one"] == "split"
    assert by_name["spam_alone"] == "flagged rater decided"
    assert by_name["spam_tips"] == "split; flagged rater decided"
    for calm in ("unanimous", "single", "spam_agrees"):
        assert by_name[calm] is None, calm
    assert not any(name.startswith("gold") and r for name, r in by_name.items())  # gold pairs never queued
    assert set(table["pair_id"]) <= set(pairs.values())

    row = table.set_index("pair_id").loc[pairs["two_one"]]
    assert row["winner"] == "A" and row["n_judgments"] == 3
    assert row["agreement"] == pytest.approx(2 / 3)
    assert row["votes"] == "A>B 2 · B>A 1"
    assert row["prompt"] == "prompt two_one" and (row["model_a"], row["model_b"]) == ("m1", "m2")
    spam_row = table.set_index("pair_id").loc[pairs["spam_alone"]]
    assert spam_row["flagged_raters"].startswith("spam (") and "gold" in spam_row["flagged_raters"]
    # most contested first
    assert list(table["agreement"]) == sorted(table["agreement"])


def test_queue_threshold_is_configurable(sqlite_url):
    pid, pairs, _, _ = build(sqlite_url)
    strict = queue(sqlite_url, pid, QueueConfig(split_below=0.6))  # 2-1 (0.67) is no longer split
    assert pairs["two_one"] not in set(strict["pair_id"]) and pairs["one_one"] in set(strict["pair_id"])
    loose = queue(sqlite_url, pid, QueueConfig(split_below=1.0, min_judgments=1))
    # min_judgments=1 still leaves a single vote out: it agrees with itself (agreement 1).
    assert pairs["single"] not in set(loose["pair_id"]) and pairs["two_one"] in set(loose["pair_id"])
    with pytest.raises(UserError, match="split_below"):
        queue(sqlite_url, pid, QueueConfig(split_below=0))


def test_adjudication_is_recorded_leaves_the_queue_and_decides_the_export(db_url, tmp_path):
    pid, pairs, admin, plain = build(db_url)
    target = pairs["two_one"]  # the raters said A, 2-1; the admin rules B>>A
    with db.session_scope(db_url) as s:
        before = project_status(s, get_project(s, pid)).judgments
        with pytest.raises(PermissionDenied):
            adjudicate(s, plain, target, -2, "not an admin")
    with db.session_scope(db_url) as s:
        with pytest.raises(UserError, match="choice"):
            adjudicate(s, admin, target, 3)
        with pytest.raises(UserError, match="no pair"):
            adjudicate(s, admin, 10_000, 1)
        other = create_project(s, "other")
    with db.session_scope(db_url) as s:  # the dashboard and `prefloop adjudicate --project` name the project
        with pytest.raises(UserError, match=f"pair {target} is not in project 'other'"):
            adjudicate(s, admin, target, -2, project=get_project(s, other.id))
    with db.session_scope(db_url) as s:
        judgment = adjudicate(s, admin, target, -2, "  B answers the question; A does not  ")
        assert judgment.kind == "adjudication" and judgment.rater_id == admin and judgment.choice == -2
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count(Judgment.id)).where(Judgment.kind == "adjudication")) == 1
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "pair.adjudicate"))
        assert event.actor_id == admin and event.details["pair_id"] == target and event.details["choice"] == -2
        assert event.details["note"] == "B answers the question; A does not"
        # not a vote: statistics and progress leave it out
        assert len(judgments_frame(s, pid)) == len(judgments_frame(s, pid, kinds=("rater", "import")))
        assert (judgments_frame(s, pid)["kind"] != "adjudication").all()
        project = get_project(s, pid)
        assert project_status(s, project).judgments == before
        export_project(s, project, tmp_path / "out.jsonl", aggregation="majority")
    assert target not in set(queue(db_url, pid)["pair_id"])
    rows = {r["pair_id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert rows[target]["chosen"][0]["content"] == "B two_one"  # the admin's ruling, against the 2-1 vote
    assert rows[target]["confidence"] == 1.0 and rows[target]["margin"] == 1.0


def test_pair_detail_lists_every_judgment_with_flags(sqlite_url):
    pid, pairs, admin, _ = build(sqlite_url)
    with db.session_scope(sqlite_url) as s:
        adjudicate(s, admin, pairs["spam_tips"], 0, "a tie")
    with db.session_scope(sqlite_url) as s:
        project = get_project(s, pid)
        detail = pair_detail(s, project, pairs["spam_tips"])
        assert (detail.response_a, detail.response_b) == ("A spam_tips", "B spam_tips")
        assert [(j.rater, j.kind, j.label) for j in detail.judgments] == [
            ("spam", "import", "A>B"), ("r2", "import", "tie"), ("boss", "adjudication", "tie")]
        assert "gold" in detail.judgments[0].flags and detail.judgments[1].flags == ""
        assert detail.judgments[0].rationale == "spam on spam_tips"
        other = create_project(s, "other")
        with pytest.raises(UserError, match="not in project"):
            pair_detail(s, other, pairs["spam_tips"])
        with pytest.raises(UserError):
            pair_detail(s, project, "1")  # ids from a browser are checked, not trusted


def test_empty_project_has_an_empty_queue(sqlite_url):
    with db.session_scope(sqlite_url) as s:
        project = create_project(s, "empty")
        assert disagreement_queue(s, project).empty


def flag_served(session, project_id: int, rater_id: int, reason: str, pair_id: int | None = None) -> int:
    """The rater flags the pair they are served (skipping others until `pair_id`, when given). Its pair id."""
    for _ in range(20):
        served = next_assignment(session, project_id, rater_id)
        assert served is not None, "the wanted pair was never served"
        served_pair = session.get(Assignment, served.assignment_id).pair_id
        if pair_id in (None, served_pair):
            flag_harmful(session, rater_id, served.assignment_id, reason)
            return served_pair
        skip(session, rater_id, served.assignment_id, "looking for another pair")
    raise AssertionError("the wanted pair was never served")


def test_flagged_pairs_show_who_flagged_when_and_why_since_the_last_review(sqlite_url):
    pid, pairs, admin, plain = build(sqlite_url)
    with db.session_scope(sqlite_url) as s:
        other = add_rater(s, "other", "pw", projects=[get_project(s, pid)]).id
        assert flagged_pairs(s, get_project(s, pid)).empty
        flagged = flag_served(s, pid, plain, "graphic violence")
    with db.session_scope(sqlite_url) as s:
        table = flagged_pairs(s, get_project(s, pid))
    assert list(table["pair_id"]) == [flagged]
    row = table.iloc[0]
    assert (row["flagged_by"], row["reason"]) == ("plain", "graphic violence")
    assert abs((row["flagged_at"] - utcnow()).total_seconds()) < 60
    name = next(n for n, i in pairs.items() if i == flagged)
    assert row["prompt"] == f"prompt {name}" and (row["model_a"], row["model_b"]) == ("m1", "m2")

    # Reviewed under another project's name: refused (the dashboard and `prefloop flagged` name the project).
    with db.session_scope(sqlite_url) as s:
        elsewhere = create_project(s, "elsewhere")
        with pytest.raises(UserError, match=f"pair {flagged} is not in project 'elsewhere'"):
            review_flag(s, admin, flagged, keep=False, project=elsewhere)

    # Returned to the queue, the pair leaves the list; flagged again, only the new flag shows.
    with db.session_scope(sqlite_url) as s:
        review_flag(s, admin, flagged, keep=True, project=get_project(s, pid))
    with db.session_scope(sqlite_url) as s:
        assert flagged_pairs(s, get_project(s, pid)).empty
        flag_served(s, pid, other, "still harmful", pair_id=flagged)
    with db.session_scope(sqlite_url) as s:
        table = flagged_pairs(s, get_project(s, pid))
    assert list(table["pair_id"]) == [flagged]
    assert (table["flagged_by"].iloc[0], table["reason"].iloc[0]) == ("other", "still harmful")


def test_progress_counts_only_pairs_still_in_the_queue(sqlite_url):
    pid, pairs, _, _ = build(sqlite_url)
    with db.session_scope(sqlite_url) as s:
        before = project_status(s, get_project(s, pid))
        s.get(Pair, pairs["unanimous"]).status = "retired"  # complete, then retired
        s.get(Pair, pairs["single"]).status = "flagged"  # one judgment of three, then flagged
    with db.session_scope(sqlite_url) as s:
        after = project_status(s, get_project(s, pid))
    # complete: unanimous, two_one and spam_agrees have at least k = 3 judgments
    assert (before.active_pairs, before.pairs_complete, before.retired_pairs) == (len(VOTES), 3, 0)
    assert (after.active_pairs, after.pairs_complete) == (len(VOTES) - 2, 2)
    assert (after.flagged_pairs, after.retired_pairs, after.pairs) == (1, 1, before.pairs)
    assert after.judgments_needed == before.judgments_needed - 2  # single no longer needs its other two

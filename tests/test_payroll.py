"""Payroll: active hours from the server's clock, pay at the project rate, effective hourly pay, floor, CSV."""

from __future__ import annotations

import csv
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from collect import db
from collect.adjudicate import adjudicate
from collect.assign import flag_harmful, next_assignment, record_activity, skip, submit_judgment
from collect.errors import UserError
from collect.ingest import import_dataset
from collect.models import Assignment, AuditEvent, Pair, utcnow
from collect.payroll import PAYROLL_COLUMNS, PayrollConfig, export_payroll, payroll
from collect.projects import ProjectSettings, add_rater, create_project, get_project

T0 = utcnow().replace(microsecond=0) - timedelta(days=1)


def work(url, pid, rater_id, start, seconds, submit=True):
    """Serve a pair at `start`, act once halfway, then submit (or skip) `seconds` after `start`."""
    with db.session_scope(url) as s:
        served = next_assignment(s, pid, rater_id, now=start)
        record_activity(s, rater_id, served.assignment_id, now=start + timedelta(seconds=seconds / 2))
        end = start + timedelta(seconds=seconds)
        if submit:
            submit_judgment(s, rater_id, served.assignment_id, 1, client_token=uuid.uuid4().hex, now=end)
        else:
            skip(s, rater_id, served.assignment_id, "outside my expertise", now=end)


def build(url):
    rows = [{"prompt": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}"} for i in range(10)]
    # imported judgments by an outside worker: not paid work
    rows.append({"prompt": "q0", "response_a": "a0", "response_b": "b0", "rater": "worker7", "choice": 1})
    with db.session_scope(url) as s:
        project = create_project(s, "pay", ProjectSettings(overlap=3, pay_rate=12.0, currency="EUR",
                                                           idle_seconds=120, lease_seconds=3600))
        import_dataset(s, project, rows)
        ids = {n: add_rater(s, n, "pw", projects=[project]).id for n in ("ann", "bob", "cyd")}
        ids["boss"] = add_rater(s, "boss", "pw", role="admin").id
        pid = project.id
    # ann: three judgments of 120 active seconds each
    for k in range(3):
        work(url, pid, ids["ann"], T0 + timedelta(minutes=10 * k), 120)
    # bob: one judgment of 120 s, then 100 s on a pair he skips (logged, not paid)
    work(url, pid, ids["bob"], T0, 120)
    work(url, pid, ids["bob"], T0 + timedelta(minutes=10), 100, submit=False)
    # cyd: served, then away for 20 minutes before submitting: only the idle cap (2 x 120 s gaps) counts
    work(url, pid, ids["cyd"], T0, 1200)
    # cyd again the next day (outside a period that ends before it)
    work(url, pid, ids["cyd"], T0 + timedelta(days=1, minutes=-5), 60)
    return pid, ids


def test_payroll_pays_active_time_and_flags_raters_under_the_floor(db_url):
    pid, ids = build(db_url)
    with db.session_scope(db_url) as s:
        pair = s.scalar(select(Pair).where(Pair.project_id == pid))
        adjudicate(s, ids["boss"], pair.id, 1, "admin work is not on the payroll")
        table = payroll(s, get_project(s, pid), PayrollConfig(floor=10.0))
    assert list(table.columns) == list(PAYROLL_COLUMNS)
    table = table.set_index("rater")
    assert sorted(table.index) == ["ann", "bob", "cyd"]  # no importer's worker, no admin
    ann, bob, cyd = table.loc["ann"], table.loc["bob"], table.loc["cyd"]
    assert ann["judgments"] == 3 and ann["paid_hours"] == pytest.approx(360 / 3600)
    assert ann["pay"] == pytest.approx(1.20) and ann["effective_hourly"] == pytest.approx(12.0)
    assert ann["unpaid_hours"] == 0 and not ann["below_floor"] and ann["currency"] == "EUR"
    assert bob["judgments"] == 1 and bob["unpaid_hours"] == pytest.approx(100 / 3600)
    assert bob["pay"] == pytest.approx(0.40)
    assert bob["effective_hourly"] == pytest.approx(0.40 / (220 / 3600))  # 6.55 EUR per logged hour
    assert bool(bob["below_floor"])
    # 1200 s of wall time but two idle-capped gaps of 600 s: 240 s, plus 60 s the next day
    assert cyd["judgments"] == 2 and cyd["paid_hours"] == pytest.approx(300 / 3600)
    assert cyd["pay"] == pytest.approx(1.00)


def test_pay_period_and_floor_settings(sqlite_url):
    pid, ids = build(sqlite_url)
    with db.session_scope(sqlite_url) as s:
        project = get_project(s, pid)
        first_day = payroll(s, project, PayrollConfig(until=T0 + timedelta(hours=12))).set_index("rater")
        assert first_day.loc["cyd", "judgments"] == 1 and first_day.loc["cyd", "pay"] == pytest.approx(0.80)
        later = payroll(s, project, PayrollConfig(since=T0 + timedelta(hours=12))).set_index("rater")
        assert list(later.index) == ["cyd"] and later.loc["cyd", "pay"] == pytest.approx(0.20)
        nobody = payroll(s, project)  # no floor: nobody flagged, whatever the pay
        assert not nobody["below_floor"].any()
        everybody = payroll(s, project, PayrollConfig(floor=12.5))  # a floor above the project's rate
        assert everybody["below_floor"].all()
        with pytest.raises(UserError, match="floor"):
            payroll(s, project, PayrollConfig(floor=-1))
        with pytest.raises(UserError, match="until"):
            payroll(s, project, PayrollConfig(since=T0, until=T0))


def test_csv_export_is_audited(sqlite_url, tmp_path):
    pid, ids = build(sqlite_url)
    out = tmp_path / "payroll" / "pay.csv"
    with db.session_scope(sqlite_url) as s:
        table = export_payroll(s, get_project(s, pid), out, PayrollConfig(floor=10.0), actor_id=ids["boss"])
    with open(out, newline="") as f:
        rows = {r["rater"]: r for r in csv.DictReader(f)}
    assert list(next(iter(rows.values()))) == list(PAYROLL_COLUMNS)
    assert rows["ann"]["pay"] == "1.2" and rows["ann"]["paid_hours"] == "0.1" and rows["ann"]["below_floor"] == "False"
    assert rows["bob"]["effective_hourly"] == "6.55" and rows["bob"]["below_floor"] == "True"
    with db.session_scope(sqlite_url) as s:
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "payroll.export"))
        assert event.actor_id == ids["boss"] and event.project_id == pid
        assert event.details["raters"] == 3 and event.details["below_floor"] == 1
        assert event.details["total_pay"] == pytest.approx(float(table["pay"].sum()))


def test_time_up_to_a_skip_or_a_flag_is_logged(db_url):
    """A skip or a flag is the rater's last action on an item, as a submission is: the time since their previous
    action counts (up to the idle threshold), logged but not paid."""
    with db.session_scope(db_url) as s:
        project = create_project(s, "pay", ProjectSettings(overlap=1, pay_rate=12.0, idle_seconds=120))
        import_dataset(s, project, [{"prompt": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}"}
                                    for i in range(2)])
        pid, ann = project.id, add_rater(s, "ann", "pw", projects=[project]).id
    with db.session_scope(db_url) as s:
        skipped = next_assignment(s, pid, ann, now=T0).assignment_id
        skip(s, ann, skipped, "outside my expertise", now=T0 + timedelta(seconds=30))
        flagged = next_assignment(s, pid, ann, now=T0 + timedelta(seconds=40)).assignment_id
        record_activity(s, ann, flagged, now=T0 + timedelta(seconds=50))
        flag_harmful(s, ann, flagged, "graphic", now=T0 + timedelta(seconds=400))  # idle: 120 s of the 350 count
    with db.session_scope(db_url) as s:
        assert [s.get(Assignment, i).active_seconds for i in (skipped, flagged)] == [30, 10 + 120]
        row = payroll(s, get_project(s, pid)).set_index("rater").loc["ann"]
    assert (row["judgments"], row["pay"]) == (0, 0) and row["unpaid_hours"] == pytest.approx(160 / 3600)

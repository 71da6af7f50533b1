"""Payroll: what each rater earned in a project, and whether their effective hourly pay clears a floor.

Raters are paid the project's `pay_rate` per active hour of submitted judgments. Active time is measured by
the server (collect.assign.record_activity: gaps longer than the project's idle threshold do not count), so
no one is paid for a tab left open. Time spent on work that was not submitted (pairs skipped or flagged,
assignments whose lease ran out, the current open one) is logged but not paid, so

    effective hourly pay = pay / logged active hours

is the project rate for a rater who submits everything they open, and lower for one who loses time to
skips and expired leases. A floor (say, the local minimum wage) flags raters under it; a project rate below
the floor flags everyone. Imported judgments and admin adjudications are not paid work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from collect.auth import audit
from collect.errors import UserError
from collect.models import RATER_KINDS, Assignment, Judgment, Project, Rater

PAYROLL_COLUMNS = ("rater_id", "rater", "judgments", "paid_hours", "unpaid_hours", "logged_hours", "pay",
                   "currency", "effective_hourly", "below_floor")


@dataclass
class PayrollConfig:
    """The pay period and the floor.

    floor: minimum effective hourly pay, in the project's currency; raters under it get below_floor=True.
        None: no floor, nobody is flagged.
    since, until: the pay period, [since, until) in UTC; None leaves that end open. A judgment counts by
        its submission time; unpaid time by the assignment's last activity.
    """

    floor: float | None = None
    since: datetime | None = None
    until: datetime | None = None


def _in_period(column, config: PayrollConfig) -> list:
    conditions = []
    if config.since is not None:
        conditions.append(column >= config.since)
    if config.until is not None:
        conditions.append(column < config.until)
    return conditions


def payroll(session: Session, project: Project, config: PayrollConfig | None = None) -> pd.DataFrame:
    """One row per rater who worked in the period, with the columns of PAYROLL_COLUMNS, by rater name.

    paid_hours: active hours of submitted judgments; unpaid_hours: active hours on assignments not submitted;
    logged_hours: both; pay: paid_hours x the project's pay_rate, rounded to cents; effective_hourly:
    pay / logged_hours (NaN with no logged time).
    """
    config = config or PayrollConfig()
    if config.floor is not None and config.floor < 0:
        raise UserError("floor must not be negative")
    if config.since is not None and config.until is not None and config.until <= config.since:
        raise UserError("the pay period ends before it starts (until <= since)")
    paid = session.execute(
        select(Judgment.rater_id, func.count(Judgment.id), func.coalesce(func.sum(Judgment.active_seconds), 0.0))
        .where(Judgment.project_id == project.id, Judgment.kind.in_(RATER_KINDS),
               *_in_period(Judgment.submitted_at, config))
        .group_by(Judgment.rater_id)).all()
    unpaid = session.execute(
        select(Assignment.rater_id, func.coalesce(func.sum(Assignment.active_seconds), 0.0))
        .where(Assignment.project_id == project.id, Assignment.status != "submitted",
               *_in_period(Assignment.last_activity_at, config))
        .group_by(Assignment.rater_id)).all()
    work: dict[int, list[float]] = {}
    for rater_id, n, seconds in paid:
        work.setdefault(rater_id, [0, 0.0, 0.0])[:2] = [int(n), float(seconds)]
    for rater_id, seconds in unpaid:
        work.setdefault(rater_id, [0, 0.0, 0.0])[2] = float(seconds)
    names = dict(session.execute(select(Rater.id, Rater.name).where(Rater.id.in_(list(work)))).all())
    rows = []
    for rater_id, (n, paid_s, unpaid_s) in work.items():
        if n == 0 and unpaid_s == 0:
            continue  # opened something and left at once: nothing to pay or report
        pay = round(paid_s / 3600 * project.pay_rate, 2)
        logged_h = (paid_s + unpaid_s) / 3600
        effective = pay / logged_h if logged_h > 0 else float("nan")
        rows.append({
            "rater_id": rater_id, "rater": names[rater_id], "judgments": n, "paid_hours": paid_s / 3600,
            "unpaid_hours": unpaid_s / 3600, "logged_hours": logged_h, "pay": pay, "currency": project.currency,
            "effective_hourly": effective,
            "below_floor": bool(config.floor is not None and logged_h > 0 and effective < config.floor),
        })
    table = pd.DataFrame(rows, columns=list(PAYROLL_COLUMNS))
    return table.sort_values("rater", ignore_index=True)


def write_payroll_csv(table: pd.DataFrame, out: str | Path) -> Path:
    """Write a payroll table as CSV (hours to 4 decimals, money to cents) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rounded = table.round({"paid_hours": 4, "unpaid_hours": 4, "logged_hours": 4, "pay": 2, "effective_hourly": 2})
    rounded.to_csv(out, index=False)
    return out


def export_payroll(
    session: Session, project: Project, out: str | Path, config: PayrollConfig | None = None,
    actor_id: int | None = None,
) -> pd.DataFrame:
    """Compute the payroll, write it to `out` as CSV, record the export in the audit log; returns the table."""
    config = config or PayrollConfig()
    table = payroll(session, project, config)
    write_payroll_csv(table, out)
    audit(session, "payroll.export", actor_id, project.id, path=str(out), raters=len(table),
          total_pay=round(float(table["pay"].sum()), 2), floor=config.floor,
          since=config.since.isoformat() if config.since else None,
          until=config.until.isoformat() if config.until else None,
          below_floor=int(table["below_floor"].sum()))
    return table

"""Serving pairs to raters and taking their judgments.

The rules, all enforced by the database rather than by a lock in one process:
- a rater never gets the same pair twice: one assignment row per (pair, rater), a unique constraint;
- a pair never gets more than the project's overlap k judgments: `pair.n_claimed` counts open and submitted
  assignments (repeats aside) and imported judgments, and is raised only by `UPDATE ... WHERE n_claimed < k` (on
  PostgreSQL the candidate rows are read with FOR UPDATE SKIP LOCKED; SQLite serializes writers with BEGIN
  IMMEDIATE); it only ever moves by increments and decrements (import too), never by a recount, which would write
  over a claim committed meanwhile;
- a rater's `next`, `reveal` and `undo` run one at a time (on PostgreSQL a lock on the rater's row), so a rater has
  one open item and the daily cap on sensitive items holds, however many tabs or retries ask at once;
- the daily cap counts sensitive items the rater saw (revealed, or judged), not those declined behind their content
  warning; a sensitive item is judged only once revealed;
- `undo` takes back the rater's latest action in the project within UNDO_SECONDS: a judgment (deleted) or a skip
  (reopened, claiming its overlap slot again if one is left), and serves that pair again; a flag is for an admin
  to review, never undone by the rater;
- an assignment not submitted before its lease ends returns its slot to the pool, and may come back to its rater
  later (the same row, opened again), as may one an undo gave back;
- with the project's repeat_rate, a pair the rater judged a while ago comes back once with the sides swapped
  (a repeat: no overlap slot, judgment kind "repeat", used only to measure the rater's consistency);
- a judgment is stored relative to the pair's A and B; the screen side comes from the server's assignment.

Every function takes the caller's rater id, checked against the project membership: ids coming from a
browser are never trusted.
"""

from __future__ import annotations

import itertools
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, lazyload

from collect.auth import audit
from collect.errors import PermissionDenied, UserError
from collect.models import RATER_KINDS, Assignment, Judgment, Pair, Project, Prompt, Rater, is_row_id, utcnow
from collect.projects import require_member

UNDO_SECONDS = 60
"""A rater may take back their last judgment or skip this long after it."""
FLAG_PREFIX = "flagged: "
"""How a flag's reason is stored in the assignment's skip_reason: a flag is a skip that also pulls the pair."""
REPEAT_GAP = 10
"""A repeat is drawn from pairs the rater judged before their last REPEAT_GAP judgments: not from memory."""


@dataclass
class Served:
    """What a rater's screen shows: the conversation and the two responses in screen order."""

    assignment_id: int
    project_id: int
    conversation: list[dict[str, str]]
    left: str
    right: str
    sensitive: list[str]
    lease_expires_at: datetime


def _view(assignment: Assignment) -> Served:
    pair = assignment.pair
    a, b = pair.response_a.content, pair.response_b.content
    left, right = (a, b) if assignment.left_is_a else (b, a)
    sensitive = pair.prompt.sensitive.split(",") if pair.prompt.sensitive else []
    return Served(assignment.id, assignment.project_id, pair.prompt.conversation, left, right, sensitive,
                  assignment.lease_expires_at)


def _expire(session: Session, assignment_id: int, pair_id: int) -> bool:
    """Expire one open assignment and give its slot back; False when it was no longer open.

    The UPDATE is conditional on the status, so two callers racing on one assignment give back one slot.
    """
    changed = session.execute(
        update(Assignment).where(Assignment.id == assignment_id, Assignment.status == "open")
        .values(status="expired").execution_options(synchronize_session=False)).rowcount
    if changed and not session.scalar(select(Assignment.is_repeat).where(Assignment.id == assignment_id)):
        _give_back_slot(session, pair_id)
    return bool(changed)


def _claim_slot(session: Session, pair_id: int, is_gold: bool, overlap: int) -> bool:
    """Take one of the pair's overlap slots; False when none is left. The conditional UPDATE is what keeps k exact
    under concurrent servers; a gold pair (judged by every rater) always has room, but its claims are counted as
    _give_back_slot gives them back."""
    claim = update(Pair).where(Pair.id == pair_id, Pair.status == "active").values(n_claimed=Pair.n_claimed + 1)
    if not is_gold:
        claim = claim.where(Pair.n_claimed < overlap)
    return bool(session.execute(claim.execution_options(synchronize_session=False)).rowcount)


def _give_back_slot(session: Session, pair_id: int) -> None:
    session.execute(update(Pair).where(Pair.id == pair_id).values(n_claimed=Pair.n_claimed - 1)
                    .execution_options(synchronize_session=False))


def expire_leases(session: Session, project_id: int, now: datetime | None = None) -> int:
    """Open assignments past their lease give their slot back. Returns how many expired."""
    now = now or utcnow()
    query = select(Assignment.id, Assignment.pair_id).where(
        Assignment.project_id == project_id, Assignment.status == "open", Assignment.lease_expires_at < now)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return sum(_expire(session, assignment_id, pair_id) for assignment_id, pair_id in session.execute(query).all())


def _sensitive_allowed(rater: Rater) -> list[str]:
    """Every value of prompt.sensitive this rater may see: "" and each combination of their opt-ins."""
    opted = sorted(rater.sensitive_opt_in or [])
    return [""] + [",".join(c) for n in range(1, len(opted) + 1) for c in itertools.combinations(opted, n)]


def _sensitive_seen_today(session: Session, rater_id: int, now: datetime) -> int:
    """Sensitive items the rater saw today (UTC), in every project: revealed today, or judged (older rows were judged
    without a reveal on record). An item declined behind its content warning was not seen and takes no place."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return session.scalar(
        select(func.count(Assignment.id)).join(Pair, Pair.id == Assignment.pair_id)
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .where(Assignment.rater_id == rater_id, Prompt.sensitive != "",
               or_(Assignment.revealed_at >= start,
                   and_(Assignment.status == "submitted", Assignment.served_at >= start)))
    ) or 0


def _candidates(
    session: Session, project: Project, rater: Rater, gold: bool, allow_sensitive: bool, skip_locked: bool
) -> list[int]:
    # A pair the rater let expire (its lease ran out, or an undo gave it back) may come back to them: kept from them
    # for good, a pair whose other raters are done stayed one judgment short for ever.
    already = exists().where(Assignment.pair_id == Pair.id, Assignment.rater_id == rater.id,
                             Assignment.status != "expired")
    # An imported judgment attributed to this rater (same name) means they have judged the pair already.
    judged = exists().where(Judgment.pair_id == Pair.id, Judgment.rater_id == rater.id)
    query = (
        select(Pair.id).join(Prompt, Prompt.id == Pair.prompt_id)
        .where(Pair.project_id == project.id, Pair.status == "active", Pair.is_gold == gold, ~already, ~judged)
    )
    if not gold:
        query = query.where(Pair.n_claimed < project.overlap)
    allowed = _sensitive_allowed(rater) if allow_sensitive else [""]
    query = query.where(Prompt.sensitive.in_(allowed))
    domains = [t.split(":", 1)[1] for t in rater.expertise or [] if t.startswith("domain:")]
    if project.routing == "experts_only":
        query = query.where(or_(Prompt.domain == "", Prompt.domain.in_(domains)))
    order: list[Any] = []
    if project.routing != "any":
        # Experts see their own domain first; then untagged prompts; other domains last (experts_first only).
        order.append(case((Prompt.domain.in_(domains), 0), (Prompt.domain == "", 1), else_=2))
    # Finish pairs that are closest to k first, so complete data accumulates early.
    order += [Pair.n_claimed.desc(), Pair.id]
    query = query.order_by(*order).limit(16)
    if skip_locked:
        query = query.with_for_update(of=Pair, skip_locked=True)
    ids = list(session.scalars(query))
    if gold:
        random.shuffle(ids)
    return ids


def _one_at_a_time(session: Session, rater_id: int) -> None:
    """Wait for the rater's other requests that serve or undo (other tabs, a client's retries) to commit.

    Serving reads the rater's open assignment and today's sensitive count, then claims: two requests reading at once
    would each open an item, past the sensitive cap. On PostgreSQL the rater's row is locked until the transaction
    ends (FOR NO KEY UPDATE, which the foreign-key checks of the rater's other writes do not wait for); the rater,
    not the membership, as the sensitive cap counts across projects. Every request on one of the rater's items takes
    it too, first (`_own_assignment`): row locks are then always taken rater first, assignment second, where a
    reveal in one tab (assignment, then rater) and a submit that serves the next item in another (the other way)
    could deadlock; and a late judgment's "moved on" check cannot race a `next` in another tab. SQLite runs whole
    transactions one at a time (BEGIN IMMEDIATE, collect.db), and SQLAlchemy writes no FOR UPDATE there."""
    if is_row_id(rater_id):
        session.execute(select(Rater.id).where(Rater.id == rater_id).with_for_update(key_share=True))


def next_assignment(session: Session, project_id: int, rater_id: int, now: datetime | None = None) -> Served | None:
    """The rater's current open assignment, or a newly claimed one; None when nothing is left for them."""
    now = now or utcnow()
    _one_at_a_time(session, rater_id)
    rater = require_member(session, project_id, rater_id)
    project = session.get(Project, project_id)
    if rater.role == "viewer":
        raise PermissionDenied("viewers cannot judge")
    expire_leases(session, project_id, now)
    current = _current_assignment(session, project_id, rater_id)
    if current is not None:
        return _view(current)
    if project.repeat_rate > 0 and random.random() < project.repeat_rate:
        repeat = _serve_repeat(session, project, rater_id, now)
        if repeat is not None:
            return repeat
    allow_sensitive = bool(rater.sensitive_opt_in) and (
        _sensitive_seen_today(session, rater_id, now) < project.sensitive_daily_cap)
    use_gold = project.gold_rate > 0 and random.random() < project.gold_rate
    # When the rater's ordinary pairs run out, the gold pairs left for them follow: a "nothing left" and then, on a
    # reload, a gold pair would tell the rater that whatever comes after "nothing left" is a check item.
    order = [True, False] if use_gold else [False, True] if project.gold_rate > 0 else [False]
    # On PostgreSQL, first pass over rows other servers are not claiming right now (SKIP LOCKED); if all
    # are busy, a second plain pass waits on them: the conditional UPDATE below is what keeps k exact.
    passes = [True, False] if session.get_bind().dialect.name == "postgresql" else [False]
    for gold, skip_locked in itertools.product(order, passes):
        for pair_id in _candidates(session, project, rater, gold, allow_sensitive, skip_locked):
            if not _claim_slot(session, pair_id, gold, project.overlap):
                continue  # another server took the last slot meanwhile
            given_back = session.scalar(select(Assignment).where(
                Assignment.pair_id == pair_id, Assignment.rater_id == rater_id, ~Assignment.is_repeat,
                Assignment.status == "expired").with_for_update())
            if given_back is not None:
                # The rater's own earlier assignment of the pair, which a lease or an undo gave back, opens again
                # (as first served: its side, its active time, its reveal).
                given_back.status = "open"
                given_back.lease_expires_at = now + timedelta(seconds=project.lease_seconds)
                given_back.last_activity_at = now
                session.flush()
                return _view(given_back)
            try:
                with session.begin_nested():
                    assignment = Assignment(
                        project_id=project_id, pair_id=pair_id, rater_id=rater_id, served_at=now,
                        left_is_a=secrets.randbelow(2) == 0,
                        lease_expires_at=now + timedelta(seconds=project.lease_seconds),
                        last_activity_at=now)
                    session.add(assignment)
            except IntegrityError:
                # Same rater, same pair, from a second browser tab at the same moment.
                _give_back_slot(session, pair_id)
                continue
            session.refresh(assignment)
            return _view(assignment)
    return None


def sensitive_cap_reached(session: Session, project_id: int, rater_id: int, now: datetime | None = None) -> int | None:
    """The project's daily cap on sensitive items when it is what leaves the rater nothing today, else None.

    For the screen shown after `next_assignment` returned None: pairs remain for the rater that the cap withholds.
    """
    now = now or utcnow()
    rater = require_member(session, project_id, rater_id)
    project = session.get(Project, project_id)
    if not rater.sensitive_opt_in or _sensitive_seen_today(session, rater_id, now) < project.sensitive_daily_cap:
        return None
    kinds = [False, True] if project.gold_rate > 0 else [False]
    if any(_candidates(session, project, rater, gold, True, False) for gold in kinds):
        return project.sensitive_daily_cap
    return None


def _serve_repeat(session: Session, project: Project, rater_id: int, now: datetime) -> Served | None:
    """Serve again, sides swapped, a pair the rater judged before their last REPEAT_GAP judgments.

    Only ordinary pairs still in the queue and without sensitive content come back (never gold, never a
    second repeat). None when there is no such pair yet.
    """
    recent = (select(Judgment.pair_id).where(Judgment.rater_id == rater_id, Judgment.project_id == project.id,
                                             Judgment.kind.in_(RATER_KINDS))
              .order_by(Judgment.submitted_at.desc(), Judgment.id.desc()).limit(REPEAT_GAP))
    repeated = exists().where(Assignment.pair_id == Judgment.pair_id, Assignment.rater_id == rater_id,
                              Assignment.is_repeat)
    row = session.execute(
        select(Judgment.pair_id, Judgment.left_is_a).join(Pair, Pair.id == Judgment.pair_id)
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .where(Judgment.rater_id == rater_id, Judgment.project_id == project.id, Judgment.kind == "rater",
               Judgment.left_is_a.is_not(None), Pair.status == "active", ~Pair.is_gold, Prompt.sensitive == "",
               Judgment.pair_id.not_in(recent.scalar_subquery()), ~repeated)
        .order_by(func.random()).limit(1)).first()
    if row is None:
        return None
    try:
        with session.begin_nested():
            assignment = Assignment(
                project_id=project.id, pair_id=row.pair_id, rater_id=rater_id, served_at=now,
                left_is_a=not row.left_is_a, is_repeat=True,
                lease_expires_at=now + timedelta(seconds=project.lease_seconds), last_activity_at=now)
            session.add(assignment)
    except IntegrityError:  # the same repeat drawn in a second tab at the same moment
        return None
    session.refresh(assignment)
    return _view(assignment)


def item_state(session: Session, rater_id: int, assignment_id: int) -> tuple[str, str] | None:
    """(assignment status, pair status) of one of the rater's items, None when it is not theirs: what a screen
    still showing it needs to know after an action on it was refused (done in another tab, or pulled)."""
    row = session.execute(
        select(Assignment.status, Pair.status).join(Pair, Pair.id == Assignment.pair_id)
        .where(Assignment.id == assignment_id, Assignment.rater_id == rater_id)).first()
    return None if row is None else (row[0], row[1])


def open_item_project(session: Session, rater_id: int, project_ids: list[int]) -> int | None:
    """The project, among `project_ids`, of the rater's most recently active open item; None when none is open."""
    return session.scalar(
        select(Assignment.project_id).where(Assignment.rater_id == rater_id, Assignment.status == "open",
                                            Assignment.project_id.in_(project_ids))
        .order_by(Assignment.last_activity_at.desc()).limit(1))


def _current_assignment(session: Session, project_id: int, rater_id: int) -> Assignment | None:
    """The rater's oldest open assignment on a pair still in the queue.

    Open assignments on a pair that was flagged or retired meanwhile are expired on the way: a pulled
    pair is never shown again.
    """
    open_ones = session.scalars(
        select(Assignment).where(Assignment.project_id == project_id, Assignment.rater_id == rater_id,
                                 Assignment.status == "open").order_by(Assignment.served_at)).all()
    for assignment in open_ones:
        if assignment.pair.status == "active":
            return assignment
        _expire(session, assignment.id, assignment.pair_id)
    return None


def _own_assignment(session: Session, rater_id: int, assignment_id: Any) -> Assignment:
    if not is_row_id(assignment_id):  # out of range: no row has it, and binding it would fail
        raise PermissionDenied("no such assignment")
    _one_at_a_time(session, rater_id)
    # Row-locked on PostgreSQL, so a lease cannot expire under a submission in flight. The pair and its texts
    # are loaded only if used (most callers need the assignment row alone).
    assignment = session.get(Assignment, assignment_id, with_for_update={"of": Assignment}, populate_existing=True,
                             options=[lazyload(Assignment.pair)])
    if assignment is None or assignment.rater_id != rater_id:
        # The same answer for "not yours" and "does not exist": ids are not an oracle.
        raise PermissionDenied("no such assignment")
    require_member(session, assignment.project_id, rater_id)
    return assignment


def record_activity(session: Session, rater_id: int, assignment_id: int, now: datetime | None = None) -> float:
    """Count the time since the rater's last action as active, up to the project's idle threshold.

    Called by the app on every interaction and on a heartbeat while the page has focus. Only the server's
    clock is used, so active time can never exceed wall time.
    """
    now = now or utcnow()
    assignment = _own_assignment(session, rater_id, assignment_id)
    if assignment.status != "open":
        return assignment.active_seconds
    project = session.get(Project, assignment.project_id)
    assignment.active_seconds = _active_until(assignment, project, now)
    assignment.last_activity_at = now
    return assignment.active_seconds


def _active_until(assignment: Assignment, project: Project, now: datetime) -> float:
    """The assignment's active seconds counted up to `now`: the gap since the last action, capped at the idle
    threshold, added; never more than the wall time since it was served (float sums of many gaps can
    otherwise overshoot it by a rounding error)."""
    gap = min(max(0.0, (now - assignment.last_activity_at).total_seconds()), project.idle_seconds)
    return min(assignment.active_seconds + gap, max(0.0, (now - assignment.served_at).total_seconds()))


def reveal(session: Session, rater_id: int, assignment_id: int, now: datetime | None = None) -> None:
    """The rater chose to see a sensitive item behind its content warning.

    Refused past the daily cap on sensitive items: the cap counts what was revealed, and an item served while the
    rater was under the cap can come to be revealed past it (an item of another project revealed meanwhile, a skip
    undone)."""
    now = now or utcnow()
    assignment = _own_assignment(session, rater_id, assignment_id)
    if assignment.revealed_at is None:
        sensitive = session.scalar(select(Prompt.sensitive).join(Pair, Pair.prompt_id == Prompt.id)
                                   .where(Pair.id == assignment.pair_id))
        cap = session.get(Project, assignment.project_id).sensitive_daily_cap
        if sensitive and _sensitive_seen_today(session, rater_id, now) >= cap:
            raise UserError(f"you have reached today's limit of {cap} sensitive items: skip this one "
                            "(more tomorrow)")
        assignment.revealed_at = now
    record_activity(session, rater_id, assignment_id, now)


def _check_choice(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -2 <= value <= 2:
        raise UserError(f"{name} must be an integer from -2 to 2")
    return value


def _by_token(session: Session, rater_id: int, client_token: str, assignment_id: int) -> Judgment | None:
    """The judgment this rater already submitted with this token, if any."""
    existing = session.scalar(select(Judgment).where(Judgment.rater_id == rater_id,
                                                     Judgment.client_token == client_token))
    if existing is not None and existing.assignment_id != assignment_id:
        raise UserError("client_token was already used for another assignment")
    return existing


def submit_judgment(
    session: Session,
    rater_id: int,
    assignment_id: int,
    choice: int,
    *,
    client_token: str,
    both_bad: bool = False,
    criteria: dict[str, int] | None = None,
    rationale: str = "",
    rewrite: str | None = None,
    now: datetime | None = None,
) -> Judgment:
    """Record a judgment. `choice` and `criteria` are as the rater saw them: +2 left much better .. -2 right.

    Idempotent by client_token: submitting the same token again returns the first judgment unchanged, also
    when the two submissions overlap (a retried request racing its original).
    """
    now = now or utcnow()
    if not client_token or len(client_token) > 100:
        raise UserError("client_token must be 1-100 characters")
    assignment = _own_assignment(session, rater_id, assignment_id)
    # Looked up after the row lock: a twin request with this token may have committed while this one waited.
    existing = _by_token(session, rater_id, client_token, assignment_id)
    if existing is not None:
        return existing
    project = session.get(Project, assignment.project_id)
    choice = _check_choice(choice, "choice")
    criteria = criteria or {}
    names = {c["name"] for c in project.rubric or []}
    for name, value in criteria.items():
        if name not in names:
            raise UserError(f"criterion {name!r} is not in this project's rubric")
        _check_choice(value, f"criteria.{name}")
    if len(rationale) > 20_000 or (rewrite is not None and len(rewrite) > 100_000):
        raise UserError("rationale or rewrite too long")
    if assignment.status == "submitted":
        raise UserError("this assignment was already submitted")
    if assignment.status == "skipped":
        flagged = (assignment.skip_reason or "").startswith(FLAG_PREFIX)
        raise UserError(f"this assignment was {'flagged as harmful' if flagged else 'skipped'}: "
                        "the judgment was not recorded")
    pair_status, sensitive = session.execute(
        select(Pair.status, Prompt.sensitive).join(Prompt, Prompt.id == Pair.prompt_id)
        .where(Pair.id == assignment.pair_id)).one()
    if pair_status != "active":
        raise UserError("this pair was pulled from the queue (flagged as harmful or retired): "
                        "the judgment was not recorded")
    if sensitive and assignment.revealed_at is None:
        # Not the screen's word alone: a judgment of content never shown is no judgment (the JSON API reveals an
        # item as it sends it).
        raise UserError("show the content before judging it, or skip it")
    if assignment.status == "expired" and session.scalar(select(Assignment.id).where(
            Assignment.rater_id == rater_id, Assignment.project_id == assignment.project_id,
            Assignment.status == "open").limit(1)) is not None:
        # A late judgment is taken for a rater whose time ran out with nothing else open; one who has moved on
        # (a newer item open, or an undone one reopened, in another tab or client) is judging a screen they left.
        raise UserError("you have moved on to another item (this one was given back, by an undo or when its lease "
                        "ran out): the judgment was not recorded")
    try:
        # A savepoint, so that a twin's committed insert (IntegrityError) leaves this transaction usable.
        with session.begin_nested():
            judgment = _record(session, assignment, project, rater_id, choice, criteria, both_bad=both_bad,
                               rationale=rationale, rewrite=rewrite, client_token=client_token, now=now)
    except IntegrityError:
        existing = _by_token(session, rater_id, client_token, assignment_id)
        if existing is not None:
            return existing
        raise UserError("this assignment was already submitted") from None
    return judgment


def _record(
    session: Session, assignment: Assignment, project: Project, rater_id: int, choice: int,
    criteria: dict[str, int], *, both_bad: bool, rationale: str, rewrite: str | None, client_token: str,
    now: datetime,
) -> Judgment:
    """Write the judgment (relative to A and B) and close the assignment; flushed."""
    if assignment.status == "expired" and not assignment.is_repeat:
        # Late but welcome, if the pair still has room for it.
        if not _claim_slot(session, assignment.pair_id, assignment.pair.is_gold, project.overlap):
            raise UserError("the lease on this assignment ran out and the pair was given to someone else")
    sign = 1 if assignment.left_is_a else -1
    judgment = Judgment(
        project_id=assignment.project_id, pair_id=assignment.pair_id, rater_id=rater_id,
        assignment_id=assignment.id, choice=sign * choice, left_is_a=assignment.left_is_a, both_bad=both_bad,
        criteria={k: sign * v for k, v in criteria.items()}, rationale=rationale, rewrite=rewrite,
        active_seconds=_active_until(assignment, project, now), submitted_at=now,
        kind="repeat" if assignment.is_repeat else "rater",
        client_token=client_token)
    assignment.status = "submitted"
    assignment.active_seconds = judgment.active_seconds
    assignment.last_activity_at = now
    session.add(judgment)
    session.flush()
    return judgment


def undo_last(session: Session, rater_id: int, project_id: int, now: datetime | None = None) -> Served:
    """Take back the rater's latest action in the project (within UNDO_SECONDS) and serve that pair again.

    The latest action by time: a judgment (deleted) or a skip (reopened; an ordinary pair claims its overlap slot
    again, refused if none is left). When it is a flag, nothing is undone: the pair waits for an admin's review,
    and reaching back past it to an older judgment would take back what the rater did not mean to.
    """
    now = now or utcnow()
    _one_at_a_time(session, rater_id)  # with the rater's `next`: it too leaves them one open assignment
    require_member(session, project_id, rater_id)
    judgment = session.scalar(
        select(Judgment).where(Judgment.rater_id == rater_id, Judgment.project_id == project_id,
                               Judgment.kind.in_(RATER_KINDS))
        .order_by(Judgment.submitted_at.desc(), Judgment.id.desc())
        .limit(1))
    # A skip's (or flag's) time is its assignment's last activity (_release); nothing moves it afterwards.
    skipped = session.scalar(
        select(Assignment).where(Assignment.rater_id == rater_id, Assignment.project_id == project_id,
                                 Assignment.status == "skipped")
        .order_by(Assignment.last_activity_at.desc(), Assignment.id.desc())
        .limit(1))
    if skipped is not None and (judgment is None or skipped.last_activity_at > judgment.submitted_at):
        if (now - skipped.last_activity_at).total_seconds() > UNDO_SECONDS:
            raise UserError(f"nothing to undo (only the last judgment or skip, within {UNDO_SECONDS} s)")
        return _undo_skip(session, skipped, rater_id, project_id, now)
    if judgment is None or (now - judgment.submitted_at).total_seconds() > UNDO_SECONDS:
        raise UserError(f"nothing to undo (only the last judgment or skip, within {UNDO_SECONDS} s)")
    assignment = session.get(Assignment, judgment.assignment_id)
    if assignment.pair.status != "active":
        raise UserError("that pair was pulled from the queue (flagged as harmful or retired): nothing to undo")
    project = session.get(Project, project_id)
    _expire_open(session, rater_id, project_id)
    audit(session, "judgment.undo", rater_id, project_id, judgment_id=judgment.id, pair_id=judgment.pair_id,
          choice=judgment.choice)
    session.delete(judgment)
    assignment.status = "open"
    assignment.lease_expires_at = now + timedelta(seconds=project.lease_seconds)
    assignment.last_activity_at = now
    session.flush()
    return _view(assignment)


def _expire_open(session: Session, rater_id: int, project_id: int) -> None:
    """The rater's open assignment, if any, goes back to the pool: the undone one comes first."""
    for other_id, pair_id in session.execute(select(Assignment.id, Assignment.pair_id).where(
            Assignment.rater_id == rater_id, Assignment.project_id == project_id, Assignment.status == "open")):
        _expire(session, other_id, pair_id)


def _undo_skip(session: Session, assignment: Assignment, rater_id: int, project_id: int, now: datetime) -> Served:
    """Reopen a skipped assignment; nothing changes when it cannot be (a flag, a pulled pair, no slot left)."""
    if (assignment.skip_reason or "").startswith(FLAG_PREFIX):
        raise UserError("your last action flagged this pair as harmful: an admin reviews it, so it cannot be "
                        "undone here (nor a judgment before it)")
    pair = session.get(Pair, assignment.pair_id, populate_existing=True)
    if pair.status != "active":
        raise UserError("that pair was pulled from the queue (flagged as harmful or retired): nothing to undo")
    project = session.get(Project, project_id)
    if not assignment.is_repeat:
        # The skip gave the slot back: claimed again as `next` claims one (a gold pair always has room).
        if not _claim_slot(session, pair.id, pair.is_gold, project.overlap):
            raise UserError("the skipped pair has gone to other raters meanwhile: nothing to undo")
    _expire_open(session, rater_id, project_id)
    audit(session, "skip.undo", rater_id, project_id, pair_id=assignment.pair_id, reason=assignment.skip_reason)
    assignment.status = "open"
    assignment.skip_reason = None
    assignment.lease_expires_at = now + timedelta(seconds=project.lease_seconds)
    assignment.last_activity_at = now
    session.flush()
    return _view(assignment)


def _release(session: Session, assignment: Assignment, status: str, reason: str, now: datetime) -> None:
    if assignment.status != "open":
        raise UserError(f"this assignment is {assignment.status}, not open")
    # The rater's last action on the item, as a submission is: the time since the previous one is active time
    # (logged; payroll pays only submitted work).
    assignment.active_seconds = _active_until(assignment, session.get(Project, assignment.project_id), now)
    assignment.last_activity_at = now
    assignment.status = status
    assignment.skip_reason = reason
    if not assignment.is_repeat:
        _give_back_slot(session, assignment.pair_id)


def skip(session: Session, rater_id: int, assignment_id: int, reason: str, now: datetime | None = None) -> None:
    """Pass on a pair (with a reason); it goes to someone else and never back to this rater."""
    if not reason or not reason.strip():
        raise UserError("a skip needs a reason")
    assignment = _own_assignment(session, rater_id, assignment_id)
    _release(session, assignment, "skipped", reason.strip()[:2000], now or utcnow())


def flag_harmful(session: Session, rater_id: int, assignment_id: int, reason: str,
                 now: datetime | None = None) -> None:
    """Pull the pair out of every queue at once until an admin reviews it.

    Other raters' open assignments on the pair expire and give their slots back, so nobody is shown it again.
    """
    assignment = _own_assignment(session, rater_id, assignment_id)
    _release(session, assignment, "skipped", f"{FLAG_PREFIX}{reason.strip()[:2000]}", now or utcnow())
    session.execute(update(Pair).where(Pair.id == assignment.pair_id).values(status="flagged")
                    .execution_options(synchronize_session=False))
    others = session.scalars(select(Assignment.id).where(Assignment.pair_id == assignment.pair_id,
                                                         Assignment.status == "open")).all()
    for other_id in others:
        _expire(session, other_id, assignment.pair_id)
    audit(session, "pair.flag", rater_id, assignment.project_id, pair_id=assignment.pair_id, reason=reason)


def review_flag(session: Session, admin_id: int, pair_id: int, keep: bool, *, project: Project | None = None) -> None:
    """An admin returns a flagged pair to the queue (keep) or retires it.

    project: when given, a pair of another project is refused (the dashboard and the CLI name the project).
    """
    from collect.projects import get_pair, require_admin

    require_admin(session, admin_id)
    pair = get_pair(session, pair_id, project)
    if pair.status != "flagged":
        raise UserError(f"pair {pair_id!r} is not flagged (it is {pair.status})")
    pair.status = "active" if keep else "retired"
    audit(session, "pair.review_flag", admin_id, pair.project_id, pair_id=pair_id, keep=keep)


@dataclass
class RaterSummary:
    judgments_today: int
    judgments_total: int
    active_hours: float
    active_hours_today: float
    earnings: float
    currency: str
    gold_judged: int
    """Gold pairs judged before today (UTC): today's are left out, so the numbers cannot reveal which of
    today's items were gold."""
    gold_accuracy: float | None
    """Share of those gold pairs where the rater picked the known winner (ties must match); None until 5."""
    minutes_since_break: float


GOLD_MINIMUM = 5


def rater_summary(session: Session, rater_id: int, project_id: int, now: datetime | None = None) -> RaterSummary:
    """What a rater sees on their own page: counts, active time, earnings, gold accuracy, time since a break.

    Gold accuracy counts only gold judgments submitted before the start of the current UTC day. Were
    today's included, a rater could watch the numbers move after each submission and learn which items
    are the gold ones, which would defeat gold pairs being indistinguishable from the rest.
    """
    now = now or utcnow()
    require_member(session, project_id, rater_id)
    project = session.get(Project, project_id)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    rows = session.execute(
        select(Judgment.submitted_at, Judgment.active_seconds, Judgment.choice, Pair.is_gold, Pair.gold_choice)
        .join(Pair, Pair.id == Judgment.pair_id)
        .where(Judgment.rater_id == rater_id, Judgment.project_id == project_id, Judgment.kind.in_(RATER_KINDS))
        .order_by(Judgment.submitted_at)).all()
    total_s = sum(r.active_seconds or 0 for r in rows)
    today_s = sum(r.active_seconds or 0 for r in rows if r.submitted_at >= start)
    gold = [(r.choice, r.gold_choice) for r in rows
            if r.is_gold and r.gold_choice is not None and r.submitted_at < start]
    correct = sum((c > 0) == (g > 0) and (c < 0) == (g < 0) for c, g in gold)
    # A break is a gap of at least 10 minutes between submissions.
    since_break = 0.0
    previous = None
    for r in rows:
        if previous is not None and (r.submitted_at - previous).total_seconds() > 600:
            since_break = 0.0
        since_break += r.active_seconds or 0
        previous = r.submitted_at
    if previous is not None and (now - previous).total_seconds() > 600:
        since_break = 0.0
    return RaterSummary(
        judgments_today=sum(r.submitted_at >= start for r in rows),
        judgments_total=len(rows),
        active_hours=total_s / 3600,
        active_hours_today=today_s / 3600,
        earnings=round(total_s / 3600 * project.pay_rate, 2),
        currency=project.currency,
        gold_judged=len(gold),
        gold_accuracy=correct / len(gold) if len(gold) >= GOLD_MINIMUM else None,
        minutes_since_break=since_break / 60,
    )

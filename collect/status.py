"""Where a project stands: prompts, pairs, judgments, progress toward the overlap.

Progress counts what the overlap counts: votes (judgments made in the app, kind "rater", and imported ones) on the
pairs still in the queue that are not gold. A judgment of a gold pair and a repeat are checks on the rater (gold
accuracy, swap consistency), not votes: status counts them apart, and an admin's adjudication is neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from collect.models import VOTE_KINDS, Assignment, Judgment, Membership, Pair, Project, Prompt, utcnow


@dataclass
class ProjectStatus:
    project: str
    prompts: int
    pairs: int
    gold_pairs: int
    flagged_pairs: int
    retired_pairs: int
    active_pairs: int
    """Pairs (not gold) still in the queue: neither flagged nor retired. The pairs `pairs_complete` counts among."""
    judgments: int
    """Votes (kinds "rater" and "import") on the active pairs: what `overlap` counts."""
    gold_judgments: int
    """Judgments of active gold pairs: checks against a known answer, not votes."""
    repeat_judgments: int
    """Repeats on active pairs (a pair judged again, sides swapped): consistency checks, not votes."""
    raters: int
    open_assignments: int
    pairs_complete: int
    """Active pairs (not gold) with at least `overlap` judgments."""
    judgments_needed: int
    """Judgments still missing to bring every active pair to `overlap`."""
    overlap: int

    @property
    def progress(self) -> float | None:
        """The share of the active pairs' `overlap` slots filled; votes past the overlap (an import can add them)
        fill nothing more. None when there are no active pairs to judge: a new project is not done."""
        total = self.active_pairs * self.overlap
        return (total - self.judgments_needed) / total if total else None

    @property
    def progress_shown(self) -> str:
        """`progress` for a table: "42%", or "no pairs" when there are no active pairs."""
        return "no pairs" if self.progress is None else f"{self.progress:.0%}"


def project_status(session: Session, project: Project) -> ProjectStatus:
    pid = project.id
    count = lambda q: session.scalar(q) or 0  # noqa: E731
    # The judgments of the pairs in the queue, by kind and by whether their pair is gold.
    counted = session.execute(
        select(Judgment.kind, Pair.is_gold, func.count(Judgment.id)).join(Pair, Pair.id == Judgment.pair_id)
        .where(Judgment.project_id == pid, Pair.status == "active").group_by(Judgment.kind, Pair.is_gold)).all()
    per_pair = (select(Judgment.pair_id, func.count(Judgment.id).label("n"))
                .where(Judgment.project_id == pid, Judgment.kind.in_(VOTE_KINDS))
                .group_by(Judgment.pair_id).subquery())
    regular = select(Pair.id, func.coalesce(per_pair.c.n, 0).label("n")).outerjoin(
        per_pair, per_pair.c.pair_id == Pair.id).where(
        Pair.project_id == pid, Pair.is_gold.is_(False), Pair.status == "active").subquery()
    active = count(select(func.count()).select_from(regular))
    complete = count(select(func.count()).select_from(regular).where(regular.c.n >= project.overlap))
    needed = count(select(func.sum(project.overlap - regular.c.n)).where(regular.c.n < project.overlap))
    return ProjectStatus(
        project=project.name,
        prompts=count(select(func.count(Prompt.id)).where(Prompt.project_id == pid)),
        pairs=count(select(func.count(Pair.id)).where(Pair.project_id == pid)),
        gold_pairs=count(select(func.count(Pair.id)).where(Pair.project_id == pid, Pair.is_gold.is_(True))),
        flagged_pairs=count(select(func.count(Pair.id)).where(Pair.project_id == pid, Pair.status == "flagged")),
        retired_pairs=count(select(func.count(Pair.id)).where(Pair.project_id == pid, Pair.status == "retired")),
        active_pairs=active,
        judgments=sum(n for kind, gold, n in counted if kind in VOTE_KINDS and not gold),
        gold_judgments=sum(n for kind, gold, n in counted if kind in VOTE_KINDS and gold),
        repeat_judgments=sum(n for kind, _, n in counted if kind == "repeat"),
        raters=count(select(func.count(Membership.id)).where(Membership.project_id == pid)),
        open_assignments=count(select(func.count(Assignment.id)).where(
            Assignment.project_id == pid, Assignment.status == "open", Assignment.lease_expires_at >= utcnow())),
        pairs_complete=complete,
        judgments_needed=int(needed),
        overlap=project.overlap,
    )

"""Where a project stands: prompts, pairs, judgments, progress toward the overlap."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from collect.models import Assignment, Judgment, Membership, Pair, Project, Prompt, utcnow


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
    raters: int
    open_assignments: int
    pairs_complete: int
    """Active pairs (not gold) with at least `overlap` judgments."""
    judgments_needed: int
    """Judgments still missing to bring every active pair to `overlap`."""
    overlap: int

    @property
    def progress(self) -> float:
        total = self.judgments + self.judgments_needed
        return self.judgments / total if total else 1.0


def project_status(session: Session, project: Project) -> ProjectStatus:
    pid = project.id
    count = lambda q: session.scalar(q) or 0  # noqa: E731
    per_pair = (select(Judgment.pair_id, func.count(Judgment.id).label("n"))
                .where(Judgment.project_id == pid, Judgment.kind != "adjudication")
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
        judgments=count(select(func.count(Judgment.id)).where(Judgment.project_id == pid,
                                                              Judgment.kind != "adjudication")),
        raters=count(select(func.count(Membership.id)).where(Membership.project_id == pid)),
        open_assignments=count(select(func.count(Assignment.id)).where(
            Assignment.project_id == pid, Assignment.status == "open", Assignment.lease_expires_at >= utcnow())),
        pairs_complete=complete,
        judgments_needed=int(needed),
        overlap=project.overlap,
    )

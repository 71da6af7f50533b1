"""The disagreement queue: pairs an admin should decide, and the admin's decision.

A pair enters the queue when
- its raters split: the most common direction (A better, tie, B better) has less than `split_below` of the
  votes (with k = 3, a 2-1 vote is a split; 3-0 is not), or
- a flagged rater decided it: without the judgments of raters that `collect.rater_quality.rater_table`
  flags, the majority vote would come out differently (or there would be no vote at all).
Gold pairs have a known answer and never enter; adjudicated pairs leave the queue.

Pairs a rater flagged as harmful wait, out of every queue, for an admin's review: `flagged_pairs` lists
them with who flagged each, when and why (from the `pair.flag` audit events);
collect.assign.review_flag returns one to the queue or retires it.

`adjudicate` records the admin's choice as a Judgment of kind "adjudication". It is not a vote: the
statistics and the overlap count leave it out (`collect.judgments.judgments_frame`), and export uses it
instead of the raters' aggregate. An admin may adjudicate a pair again; the latest decision counts and the
earlier ones stay in the database and the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from collect.aggregate import majority_vote
from collect.auth import audit
from collect.errors import UserError
from collect.judgments import QUALITY_KINDS, judgments_frame
from collect.models import CHOICES, AuditEvent, Judgment, Pair, Project, Rater
from collect.projects import get_pair, require_admin
from collect.rater_quality import QualityConfig, rater_table

QUEUE_COLUMNS = ("pair_id", "reason", "winner", "agreement", "n_judgments", "votes", "flagged_raters",
                 "prompt", "model_a", "model_b")
FLAGGED_COLUMNS = ("pair_id", "flagged_at", "flagged_by", "reason", "prompt", "model_a", "model_b")


@dataclass
class QueueConfig:
    """What counts as a disagreement.

    split_below: a pair is split when its most common direction has less than this share of the votes.
        The default 0.75 queues 2-1 and 1-1 votes and lets 3-0 and 3-1 through.
    min_judgments: judgments a pair needs before it can be called split (one vote cannot disagree).
    quality: thresholds for the rater flags (`collect.rater_quality.QualityConfig`) that decide who is a
        flagged rater.
    """

    split_below: float = 0.75
    min_judgments: int = 2
    quality: QualityConfig = field(default_factory=QualityConfig)


def flagged_raters(frame: pd.DataFrame, quality: QualityConfig | None = None) -> dict[int, str]:
    """rater_id -> their flags ("speeder,position"), for raters with at least one flag."""
    if frame.empty:
        return {}
    table = rater_table(frame, quality)
    return {int(r): f for r, f in zip(table["rater_id"], table["flags"]) if f}


def disagreement_queue(session: Session, project: Project, config: QueueConfig | None = None) -> pd.DataFrame:
    """The pairs to adjudicate, most contested first, with the columns of QUEUE_COLUMNS.

    reason: "split", "flagged rater decided", or both joined by "; ". winner and agreement are the plain
    majority vote's (see collect.aggregate.majority_vote); votes counts the five buttons ("A>B 2 · B>A 1");
    flagged_raters names the flagged raters who judged the pair, with their flags.
    """
    config = config or QueueConfig()
    if not 0 < config.split_below <= 1:
        raise UserError("split_below must be in (0, 1]")
    frame = judgments_frame(session, project.id)
    if frame.empty:
        return pd.DataFrame(columns=list(QUEUE_COLUMNS))
    # Flags read every judgment (gold accuracy needs the gold pairs, swap consistency the repeats); the
    # queue itself skips gold pairs.
    flags = flagged_raters(judgments_frame(session, project.id, QUALITY_KINDS), config.quality)
    adjudicated = set(session.scalars(select(Judgment.pair_id).where(
        Judgment.project_id == project.id, Judgment.kind == "adjudication")))
    frame = frame[~frame["is_gold"].astype(bool) & ~frame["pair_id"].isin(adjudicated)]
    if frame.empty:
        return pd.DataFrame(columns=list(QUEUE_COLUMNS))

    votes = majority_vote(frame).set_index("pair_id")
    split = votes.index[(votes["n_judgments"] >= config.min_judgments) & (votes["agreement"] < config.split_below)]
    by_flagged = frame[frame["rater_id"].isin(flags)]
    decided: set[int] = set()
    if not by_flagged.empty:
        rest = frame[~frame["rater_id"].isin(flags)]
        without = majority_vote(rest).set_index("pair_id")["winner"] if not rest.empty else pd.Series(dtype=object)
        for pair_id in by_flagged["pair_id"].unique():
            if without.get(pair_id) != votes.at[pair_id, "winner"]:
                decided.add(int(pair_id))

    split_ids = {int(p) for p in split}
    queued = sorted(split_ids | decided)
    if not queued:
        return pd.DataFrame(columns=list(QUEUE_COLUMNS))
    names = dict(session.execute(select(Rater.id, Rater.name)).all())
    pairs = {p.id: p for p in session.scalars(select(Pair).where(Pair.id.in_(queued)))}
    rows = []
    for pair_id, judged in frame[frame["pair_id"].isin(queued)].groupby("pair_id"):
        pair_id = int(pair_id)
        reasons = (["split"] if pair_id in split_ids else []) + (
            ["flagged rater decided"] if pair_id in decided else [])
        counts = judged["choice"].value_counts()
        flagged_here = sorted({names.get(int(r), str(r)) + f" ({flags[int(r)]})"
                               for r in judged["rater_id"] if int(r) in flags})
        rows.append({
            "pair_id": pair_id,
            "reason": "; ".join(reasons),
            "winner": votes.at[pair_id, "winner"],
            "agreement": float(votes.at[pair_id, "agreement"]),
            "n_judgments": int(votes.at[pair_id, "n_judgments"]),
            "votes": " · ".join(f"{CHOICES[c]} {int(counts[c])}" for c in (2, 1, 0, -1, -2) if c in counts),
            "flagged_raters": ", ".join(flagged_here),
            "prompt": _prompt_text(pairs[pair_id].prompt.conversation),
            "model_a": pairs[pair_id].response_a.model,
            "model_b": pairs[pair_id].response_b.model,
        })
    table = pd.DataFrame(rows, columns=list(QUEUE_COLUMNS))
    return table.sort_values(["agreement", "n_judgments", "pair_id"], ascending=[True, False, True],
                             ignore_index=True)


def flagged_pairs(session: Session, project: Project) -> pd.DataFrame:
    """The project's pairs flagged as harmful and awaiting review, first flagged first (FLAGGED_COLUMNS).

    flagged_at, flagged_by and reason come from the `pair.flag` audit events since the pair's last review
    (a pair returned to the queue and flagged again shows only the new flags; several raters' flags are
    joined, the reasons with " | "); prompt is the last user turn, shortened.
    """
    pairs = {p.id: p for p in session.scalars(
        select(Pair).where(Pair.project_id == project.id, Pair.status == "flagged").order_by(Pair.id))}
    flags: dict[int, list[tuple[Any, str, str]]] = {pair_id: [] for pair_id in pairs}
    events = session.execute(
        select(AuditEvent.action, AuditEvent.at, AuditEvent.details, Rater.name)
        .outerjoin(Rater, Rater.id == AuditEvent.actor_id)
        .where(AuditEvent.project_id == project.id, AuditEvent.action.in_(("pair.flag", "pair.review_flag")))
        .order_by(AuditEvent.at, AuditEvent.id)).all()
    for action, at, details, name in events:
        pair_id = (details or {}).get("pair_id")
        if pair_id not in flags:
            continue
        if action == "pair.review_flag":
            flags[pair_id] = []  # reviewed: only flags after the review are pending
        else:
            flags[pair_id].append((at, name or "", str(details.get("reason", "")).strip()))
    rows = [{
        "pair_id": pair_id,
        "flagged_at": flags[pair_id][0][0] if flags[pair_id] else None,
        "flagged_by": ", ".join(dict.fromkeys(name for _, name, _ in flags[pair_id])),
        "reason": " | ".join(reason for *_, reason in flags[pair_id]),
        "prompt": _prompt_text(pair.prompt.conversation),
        "model_a": pair.response_a.model,
        "model_b": pair.response_b.model,
    } for pair_id, pair in pairs.items()]
    table = pd.DataFrame(rows, columns=list(FLAGGED_COLUMNS))
    return table.sort_values(["flagged_at", "pair_id"], ignore_index=True, na_position="first")


def _prompt_text(conversation: list[dict[str, Any]], limit: int = 200) -> str:
    """The last user turn, shortened: enough to recognise a pair in a table."""
    users = [m.get("content", "") for m in conversation if m.get("role") == "user"] or [""]
    text = " ".join(str(users[-1]).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class PairJudgment:
    rater: str
    kind: str
    choice: int
    """Relative to the pair's A and B: +2 A>>B .. -2 B>>A."""
    label: str
    both_bad: bool
    rationale: str
    criteria: dict[str, Any]
    flags: str
    submitted_at: Any


@dataclass
class PairDetail:
    """Everything an admin needs to decide a pair: the conversation, both responses, every judgment."""

    pair_id: int
    project_id: int
    conversation: list[dict[str, Any]]
    response_a: str
    response_b: str
    model_a: str
    model_b: str
    is_gold: bool
    gold_choice: int | None
    judgments: list[PairJudgment]
    """Raters' and imported judgments, then adjudications, each in submission order."""


def pair_detail(session: Session, project: Project, pair_id: int, quality: QualityConfig | None = None) -> PairDetail:
    """One pair of `project` with its judgments (rater flags included). UserError if it is not in the project."""
    pair = get_pair(session, pair_id, project)
    flags = flagged_raters(judgments_frame(session, project.id, QUALITY_KINDS), quality)
    rows = session.execute(
        select(Judgment, Rater.name).join(Rater, Rater.id == Judgment.rater_id)
        .where(Judgment.pair_id == pair.id).order_by(Judgment.submitted_at, Judgment.id)).all()
    judged = [PairJudgment(name, j.kind, j.choice, CHOICES[j.choice], j.both_bad, j.rationale or "",
                           dict(j.criteria or {}), flags.get(j.rater_id, ""), j.submitted_at)
              for j, name in rows]
    judged.sort(key=lambda j: j.kind == "adjudication")  # stable: adjudications last
    return PairDetail(pair.id, pair.project_id, pair.prompt.conversation, pair.response_a.content,
                      pair.response_b.content, pair.response_a.model, pair.response_b.model, pair.is_gold,
                      pair.gold_choice, judged)


def adjudicate(session: Session, admin_id: int, pair_id: int, choice: int, note: str = "", *,
               project: Project | None = None) -> Judgment:
    """Record an admin's decision on a pair: `choice` relative to A and B (+2 A>>B .. -2 B>>A), with a note.

    Only admins may adjudicate (PermissionDenied otherwise). The decision is written to the audit log.
    project: when given, a pair of another project is refused (the dashboard and the CLI name the project).
    """
    admin = require_admin(session, admin_id)
    if isinstance(choice, bool) or not isinstance(choice, int) or choice not in CHOICES:
        raise UserError("choice must be an integer from -2 (B>>A) to 2 (A>>B)")
    if not isinstance(note, str) or len(note) > 20_000:
        raise UserError("note must be text of at most 20,000 characters")
    pair = get_pair(session, pair_id, project)
    judgment = Judgment(project_id=pair.project_id, pair_id=pair.id, rater_id=admin.id, choice=choice,
                        left_is_a=None, rationale=note.strip(), kind="adjudication")
    session.add(judgment)
    session.flush()
    audit(session, "pair.adjudicate", admin.id, pair.project_id, pair_id=pair.id, choice=choice,
          label=CHOICES[choice], note=note.strip())
    return judgment

"""Judgments as a table: the one shape the statistics, aggregation and export read."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from collect.models import VOTE_KINDS, Judgment, Pair, Response


QUALITY_KINDS = ("rater", "import", "repeat")
"""The kinds per-rater statistics read: repeats (a pair served again with the sides swapped) are what swap
consistency measures, and collect.rater_quality counts only each rater's first judgment of a pair elsewhere."""


def judgments_frame(session: Session, project_id: int, kinds: tuple[str, ...] = VOTE_KINDS) -> pd.DataFrame:
    """One row per judgment, with the columns listed in collect.aggregate.JUDGMENT_COLUMNS.

    Adjudications are left out by default: they are an admin's ruling, read separately by export. So are
    repeats: a rater's second look at a pair is a consistency check, not a second vote (see QUALITY_KINDS).
    Judgments of pairs that are not `active` (flagged as harmful, or retired) are left out: those pairs
    are out of the data until an admin puts them back.
    """
    a, b = aliased(Response), aliased(Response)
    rows = session.execute(
        select(Judgment.id.label("judgment_id"), Judgment.pair_id, Judgment.rater_id, Judgment.choice,
               Judgment.left_is_a, Judgment.both_bad, Judgment.active_seconds, Judgment.submitted_at,
               Judgment.criteria, Judgment.kind, Pair.prompt_id, Pair.response_a_id, Pair.response_b_id,
               Pair.is_gold, Pair.gold_choice,
               a.content.label("text_a"), b.content.label("text_b"), a.model.label("model_a"),
               b.model.label("model_b"))
        .join(Pair, Pair.id == Judgment.pair_id)
        .join(a, a.id == Pair.response_a_id).join(b, b.id == Pair.response_b_id)
        .where(Judgment.project_id == project_id, Judgment.kind.in_(kinds), Pair.status == "active")
        .order_by(Judgment.id)
    ).mappings().all()
    frame = pd.DataFrame(rows, columns=[
        "judgment_id", "pair_id", "rater_id", "choice", "left_is_a", "both_bad", "active_seconds",
        "submitted_at", "criteria", "kind", "prompt_id", "response_a_id", "response_b_id", "is_gold", "gold_choice", "text_a", "text_b",
        "model_a", "model_b"])
    frame["len_a"] = frame["text_a"].str.len()
    frame["len_b"] = frame["text_b"].str.len()
    frame["active_seconds"] = frame["active_seconds"].astype(float)
    frame["criteria"] = frame["criteria"].map(lambda c: c or None)
    frame["gold_choice"] = frame["gold_choice"].astype(object).where(frame["gold_choice"].notna(), None)
    frame["left_is_a"] = frame["left_is_a"].astype(object).where(frame["left_is_a"].notna(), None)
    return frame.drop(columns=["text_a", "text_b"])


def pair_models(session: Session, project_id: int) -> set[str]:
    """The named models of the project's pairs in the queue, two different models a pair: the leaderboard's
    models, whether or not a judgment compares them yet."""
    a, b = aliased(Response), aliased(Response)
    rows = session.execute(
        select(a.model, b.model).select_from(Pair)
        .join(a, a.id == Pair.response_a_id).join(b, b.id == Pair.response_b_id)
        .where(Pair.project_id == project_id, Pair.status == "active", a.model != b.model)
        .distinct()).all()
    return {model for row in rows for model in row if isinstance(model, str) and model.strip()}

"""CLI for the quality statistics: `agreement`, `raters`, `leaderboard` (thin wrappers over the Python API).

Each command reads one project's judgments from the database (`--project`, `--db`), prints a table, and can
write it as CSV with `--out`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from collect.cli_options import CSV_OUT_OPTION, DB_OPTION, PROJECT_OPTION
from collect.defaults import N_BOOTSTRAP
from collect.errors import UserError
from collect.models import VOTE_KINDS

if TYPE_CHECKING:  # pandas, like the statistics, loads only when a command runs: `prefloop --help` starts faster
    import pandas as pd

app = typer.Typer(help="Quality statistics: inter-rater agreement, per-rater quality, model leaderboard.")


def load_judgments(project: str, db: str | None, kinds: tuple[str, ...] = VOTE_KINDS
                   ) -> tuple[pd.DataFrame, dict[int, str]]:
    """The project's judgments frame (collect.aggregate.JUDGMENT_COLUMNS) and rater names by id."""
    from sqlalchemy import select

    from collect.db import existing_session
    from collect.judgments import judgments_frame
    from collect.models import Rater
    from collect.projects import get_project

    with existing_session(db) as session:
        found = get_project(session, project)
        frame = judgments_frame(session, found.id, kinds)
        names = dict(session.execute(select(Rater.id, Rater.name)).all())
    if frame.empty:
        raise UserError(f"project {project!r} has no judgments yet")
    return frame, names


RATER_SUMMARY = {
    "rater": "rater", "n_judgments": "n", "gold_accuracy": "gold", "consensus_agreement": "consensus",
    "left_share": "left", "consistency": "consistent", "median_seconds": "seconds", "longer_share": "longer",
    "contradiction_rate": "contradicts", "reliability": "reliability", "flags": "flags",
}


def show(table: pd.DataFrame, title: str, out: Path | None,
         columns: list[str] | dict[str, str] | None = None) -> None:
    """Print a DataFrame as a rich table (numbers rounded) and optionally save all of it as CSV.

    columns: the columns to print (a dict also renames them for the header); default all.
    """
    import pandas as pd

    console = Console(markup=False)
    view = Table(title=title)
    shown = table[list(columns)] if columns is not None else table
    headers = columns if isinstance(columns, dict) else {c: c for c in shown.columns}
    for column in shown.columns:
        numeric = pd.api.types.is_numeric_dtype(shown[column])
        view.add_column(str(headers[column]), justify="right" if numeric else "left")
    for row in shown.itertuples(index=False):
        view.add_row(*(_cell(v) for v in row))
    console.print(view)
    if out is not None:
        table.to_csv(out, index=False)
        console.print(f"wrote {out}")


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isinf(value):  # a leaderboard interval the data leave open
            from collect.leaderboard import open_bound  # numpy and pandas: not at start-up

            return open_bound(value)
        return "" if math.isnan(value) else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return "" if value is None else str(value)


@app.command()
def agreement(
    project: str = PROJECT_OPTION,
    db: Optional[str] = DB_OPTION,
    n_bootstrap: int = typer.Option(N_BOOTSTRAP, help="Bootstrap replicates for the confidence intervals."),
    min_overlap: int = typer.Option(10, help="Pairs two raters must share to get a Cohen's kappa."),
    pairs: bool = typer.Option(False, "--pairs", help="Also list Cohen's kappa for every rater pair."),
    seed: int = typer.Option(0, help="Random seed of the bootstrap."),
    out: Optional[Path] = CSV_OUT_OPTION,
) -> None:
    """Fleiss' kappa, Krippendorff's alpha (ordinal, 5-point) and mean Cohen's kappa, with 95% intervals."""
    from collect.agreement import agreement_tables

    frame, names = load_judgments(project, db)
    summary, table = agreement_tables(frame, n_bootstrap=n_bootstrap, min_overlap=min_overlap, seed=seed)
    show(summary, f"Agreement: {project} (95% bootstrap intervals)", out,
         columns=["statistic", "scale", "level", "estimate", "ci_low", "ci_high", "n_items", "n_raters"])
    if pairs:
        for side in ("rater_a", "rater_b"):
            table[side] = table[side].map(lambda r: names.get(r, r))
        show(table, "Cohen's kappa per rater pair (directions)", None)


@app.command()
def raters(
    project: str = PROJECT_OPTION,
    db: Optional[str] = DB_OPTION,
    flagged: bool = typer.Option(False, "--flagged", help="Only raters with at least one flag."),
    out: Optional[Path] = CSV_OUT_OPTION,
) -> None:
    """One row per rater: gold accuracy, consensus, position bias, consistency, speed, length bias, flags."""
    from collect.judgments import QUALITY_KINDS
    from collect.rater_quality import rater_table

    frame, names = load_judgments(project, db, QUALITY_KINDS)
    table = rater_table(frame)
    table.insert(1, "rater", table["rater_id"].map(lambda r: names.get(r, str(r))))
    if flagged:
        table = table[table["flags"] != ""]
        if table.empty:  # one line, as the collection commands' empty lists say; --out still gets the columns
            Console(markup=False).print(f"Raters: {project}: nothing flagged (no rater has a flag)")
            if out is not None:
                table.to_csv(out, index=False)
            return
    # The terminal gets the headline of each check; --out has every column.
    show(table, f"Raters: {project}", out, columns=RATER_SUMMARY)


@app.command()
def leaderboard(
    project: str = PROJECT_OPTION,
    db: Optional[str] = DB_OPTION,
    n_bootstrap: int = typer.Option(N_BOOTSTRAP, help="Bootstrap replicates for the rating intervals."),
    anchor: Optional[str] = typer.Option(None, help="Pin this model at 1000 (default: mean rating 1000)."),
    seed: int = typer.Option(0, help="Random seed of the bootstrap."),
    plot: Optional[Path] = typer.Option(None, help="Also save the ratings plot (PNG, SVG or PDF)."),
    out: Optional[Path] = CSV_OUT_OPTION,
) -> None:
    """Bradley-Terry ratings with 95% bootstrap intervals, Elo, and the win-rate matrix."""
    from collect import leaderboard as lb

    from collect.db import existing_session
    from collect.judgments import pair_models
    from collect.projects import get_project

    frame, _ = load_judgments(project, db)
    with existing_session(db) as session:
        models = pair_models(session, get_project(session, project).id)
    board = lb.leaderboard(frame, n_bootstrap=n_bootstrap, anchor=anchor, seed=seed)
    show(board, f"Leaderboard: {project}", out)
    if note := lb.unjudged_note(board, models):
        Console(markup=False).print(note)
    show(lb.win_rate_matrix(frame).reset_index(), "Win rate of row model against column model", None)
    if plot is not None:
        lb.plot_leaderboard(board).savefig(plot, dpi=120)
        Console(markup=False).print(f"wrote {plot}")

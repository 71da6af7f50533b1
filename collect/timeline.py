"""Throughput and agreement over time, for the admin dashboard's plots.

Both read a judgments frame (collect.aggregate.JUDGMENT_COLUMNS) and bucket it by `submitted_at` into
periods (pandas frequency strings: "h", "D", "W"; by default chosen from the time span).
Throughput (`judgments_over_time`, `recent_throughput`) counts only judgments made in the app (kind
"rater"): an imported judgment carries the time of its import, not of its making.
Agreement over time puts each pair in the period of its last judgment, when the pair was complete, and
computes Fleiss' kappa (on directions) over the pairs completed in that period with all their judgments,
so every pair counts once, with all its votes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from collect.agreement import fleiss
from collect.defaults import N_BOOTSTRAP
from collect.models import utcnow

TIMELINE_COLUMNS = ("period", "judgments", "raters", "active_hours", "cumulative")
AGREEMENT_COLUMNS = ("period", "pairs", "kappa", "ci_low", "ci_high")


def pick_freq(times: pd.Series) -> str:
    """Hours for a span under two days, days under ten weeks, weeks beyond."""
    times = pd.to_datetime(times).dropna()
    span = times.max() - times.min() if len(times) else pd.Timedelta(0)
    if span < pd.Timedelta(days=2):
        return "h"
    if span < pd.Timedelta(weeks=10):
        return "D"
    return "W"


def _periods(times: pd.Series, freq: str) -> pd.Series:
    return pd.to_datetime(times).dt.to_period(freq).dt.start_time


def app_judgments(judgments: pd.DataFrame) -> pd.DataFrame:
    """The judgments raters made in the app, with the time they made them (kind "rater", submitted_at set)."""
    if len(judgments) == 0:
        return judgments
    return judgments[(judgments["kind"] == "rater") & judgments["submitted_at"].notna()]


def recent_throughput(judgments: pd.DataFrame, window: pd.Timedelta = pd.Timedelta(days=1),
                      now: pd.Timestamp | None = None) -> tuple[int, int]:
    """(judgments, distinct raters) made in the app during the `window` before `now` (naive UTC)."""
    made = app_judgments(judgments)
    if len(made) == 0:
        return 0, 0
    recent = made[pd.to_datetime(made["submitted_at"]) >= (now or pd.Timestamp(utcnow())) - window]
    return len(recent), int(recent["rater_id"].nunique())


def judgments_over_time(judgments: pd.DataFrame, freq: str | None = None) -> pd.DataFrame:
    """Per period: judgments made in the app, distinct raters, their active hours, and the running total.

    Periods with no judgments between the first and the last appear with zeros, so a plot shows the gaps.
    """
    timed = app_judgments(judgments)
    if len(timed) == 0:
        return pd.DataFrame(columns=list(TIMELINE_COLUMNS))
    freq = freq or pick_freq(timed["submitted_at"])
    period = _periods(timed["submitted_at"], freq)
    grouped = timed.assign(period=period).groupby("period")
    table = pd.DataFrame({
        "judgments": grouped.size(),
        "raters": grouped["rater_id"].nunique(),
        "active_hours": grouped["active_seconds"].sum(min_count=1).fillna(0.0) / 3600,
    })
    full = pd.period_range(period.min(), period.max(), freq=freq).start_time
    table = table.reindex(full, fill_value=0).rename_axis("period").reset_index()
    table["cumulative"] = table["judgments"].cumsum()
    return table[list(TIMELINE_COLUMNS)]


def agreement_over_time(
    judgments: pd.DataFrame, freq: str | None = None, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0
) -> pd.DataFrame:
    """Per period: pairs completed (last judgment in the period, at least two judgments) and their Fleiss'
    kappa on directions with a bootstrap interval. Periods with no such pair are left out."""
    timed = judgments[judgments["submitted_at"].notna()] if len(judgments) else judgments
    if len(timed) == 0:
        return pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    freq = freq or pick_freq(timed["submitted_at"])
    per_pair = timed.groupby("pair_id")["submitted_at"].agg(["max", "size"])
    per_pair = per_pair[per_pair["size"] >= 2]
    if per_pair.empty:
        return pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    completed = _periods(per_pair["max"], freq)
    rows = []
    for period, pair_ids in completed.groupby(completed).groups.items():
        stat = fleiss(timed[timed["pair_id"].isin(pair_ids)], "direction", n_bootstrap=n_bootstrap, seed=seed)
        rows.append((period, stat.n_items, stat.estimate, stat.ci_low, stat.ci_high))
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS)).sort_values("period", ignore_index=True)


def plot_judgments_over_time(table: pd.DataFrame, target: int | None = None, title: str = "Judgments over time"):
    """A matplotlib Figure: judgments per period (bars) and the running total (line, right axis), with the
    total the project needs (`target`: the table's judgments plus those still needed) as a dashed line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.add_subplot()
    if len(table) == 0:
        ax.text(0.5, 0.5, "no judgments made in the app yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    x = np.arange(len(table))
    ax.bar(x, table["judgments"], color="tab:blue", alpha=0.7, label="per period")
    ax.set_ylabel("judgments per period")
    labels = _labels(table["period"])
    step = max(1, len(x) // 12)
    ax.set_xticks(x[::step], labels[::step], rotation=30, ha="right")
    total = ax.twinx()
    total.plot(x, table["cumulative"], color="tab:orange", marker="o", markersize=3, label="total")
    if target:
        total.axhline(target, color="tab:green", linestyle="--", label=f"needed ({target})")
    total.set_ylabel("total judgments")
    total.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + total.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_title(title)
    return fig


def plot_progress(judgments: pd.DataFrame, judgments_needed: int):
    """The overview's plot: judgments made in the app on ordinary pairs, and the total at which every pair in the
    queue has its overlap (`judgments_needed` more). Gold checks are left out of both, as `project_status` leaves
    them out of what is needed: counted in the line, they would carry it to the target before the queue is done."""
    table = judgments_over_time(judgments[~judgments["is_gold"].astype(bool)])
    made = int(table["judgments"].sum()) if len(table) else 0
    return plot_judgments_over_time(table, target=made + judgments_needed or None,
                                    title="Judgments made in the app (gold checks aside)")


def plot_agreement_over_time(table: pd.DataFrame, title: str = "Fleiss' kappa of pairs completed per period"):
    """A matplotlib Figure: kappa per period with its bootstrap interval."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.add_subplot()
    if len(table) == 0:
        ax.text(0.5, 0.5, "no pair has two judgments yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    x = np.arange(len(table))
    kappa = table["kappa"].astype(float).to_numpy()
    low = np.nan_to_num(kappa - table["ci_low"].astype(float).to_numpy())
    high = np.nan_to_num(table["ci_high"].astype(float).to_numpy() - kappa)
    ax.errorbar(x, kappa, yerr=np.vstack([low, high]), fmt="o-", capsize=3, color="tab:purple")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(x, _labels(table["period"]), rotation=30, ha="right")
    ax.set_ylim(-0.2, 1.05)
    ax.set_ylabel("Fleiss' kappa")
    ax.set_title(title)
    return fig


def _labels(periods: pd.Series) -> list[str]:
    """Dates, or dates with the hour when the periods are hours."""
    periods = pd.to_datetime(pd.Series(periods)).reset_index(drop=True)
    hourly = (periods.dt.hour != 0).any() or (len(periods) > 1 and (periods.diff().min() < pd.Timedelta(days=1)))
    return [p.strftime("%m-%d %H:00" if hourly else "%Y-%m-%d") for p in periods]

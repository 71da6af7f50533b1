"""Throughput and agreement over time: bucketing checked by hand on small frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from collect.agreement import fleiss
from collect.timeline import (
    agreement_over_time, judgments_over_time, pick_freq, plot_agreement_over_time, plot_judgments_over_time,
    plot_progress, recent_throughput,
)

DAY = pd.Timestamp("2025-03-03")


def frame(rows):
    """rows: (pair_id, rater_id, choice, submitted_at, active_seconds[, kind]); kind is "rater" unless given."""
    rows = [tuple(r) + ("rater",) * (6 - len(r)) for r in rows]
    return pd.DataFrame(rows, columns=["pair_id", "rater_id", "choice", "submitted_at", "active_seconds", "kind"])


def test_judgments_per_day_with_empty_days_and_running_total():
    judged = frame([
        (1, 1, 1, DAY + pd.Timedelta(hours=9), 30.0),
        (1, 2, 1, DAY + pd.Timedelta(hours=17), 90.0),
        (2, 1, -1, DAY + pd.Timedelta(days=2, hours=8), np.nan),  # no active time: counts, adds no hours
        (2, 3, 0, pd.NaT, 10.0),  # no time at all: left out
        (3, 4, 1, DAY + pd.Timedelta(days=1, hours=1), np.nan, "import"),  # imported: stamped at import, left out
    ])
    table = judgments_over_time(judged, freq="D")
    assert list(table["period"]) == [DAY, DAY + pd.Timedelta(days=1), DAY + pd.Timedelta(days=2)]
    assert list(table["judgments"]) == [2, 0, 1]
    assert list(table["raters"]) == [2, 0, 1]
    assert table["active_hours"].tolist() == pytest.approx([120 / 3600, 0.0, 0.0])
    assert list(table["cumulative"]) == [2, 2, 3]
    assert judgments_over_time(judged.iloc[:0]).empty


def test_agreement_counts_each_pair_once_in_the_period_it_was_completed():
    rows = []
    # pairs 1-4 completed on day 0 with full agreement; pairs 5-8 completed on day 1, split 2-1 two ways
    for pair in range(1, 5):
        rows += [(pair, r, 1, DAY + pd.Timedelta(hours=r), 1.0) for r in (1, 2, 3)]
    for pair in range(5, 9):
        choices = (1, 1, -1) if pair % 2 else (-1, -1, 1)
        # the first vote came on day 0: the pair still belongs to day 1, when its last vote came
        rows += [(pair, r, c, DAY + pd.Timedelta(days=int(r > 1), hours=r), 1.0) for r, c in zip((1, 2, 3), choices)]
    rows.append((9, 1, 1, DAY, 1.0))  # one vote only: no agreement to measure
    judged = frame(rows)
    table = agreement_over_time(judged, freq="D", n_bootstrap=50)
    assert list(table["period"]) == [DAY, DAY + pd.Timedelta(days=1)]
    assert list(table["pairs"]) == [4, 4]
    day1 = judged[judged["pair_id"].between(5, 8)]
    assert table["kappa"].iloc[1] == pytest.approx(fleiss(day1, n_bootstrap=0).estimate)
    assert table["kappa"].iloc[1] < 0  # 2-1 splits both ways agree less than chance
    assert np.isnan(table["kappa"].iloc[0])  # everyone always says A: kappa is undefined, not 1


def test_frequency_follows_the_span_and_plots_draw():
    hours = pd.Series([DAY, DAY + pd.Timedelta(hours=20)])
    assert pick_freq(hours) == "h"
    assert pick_freq(pd.Series([DAY, DAY + pd.Timedelta(days=20)])) == "D"
    assert pick_freq(pd.Series([DAY, DAY + pd.Timedelta(days=200)])) == "W"
    judged = frame([(1, 1, 1, DAY, 5.0), (1, 2, -1, DAY + pd.Timedelta(hours=3), 5.0)])
    fig = plot_judgments_over_time(judgments_over_time(judged), target=10)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "03-03 00:00"  # hourly periods are labelled with the hour, midnight included
    assert plot_agreement_over_time(agreement_over_time(judged)).axes
    assert plot_judgments_over_time(judgments_over_time(judged.iloc[:0])).axes  # "no judgments yet"


def test_progress_leaves_gold_checks_out_of_the_line_and_the_target():
    judged = frame([(1, 1, 1, DAY, 5.0), (1, 2, -1, DAY + pd.Timedelta(hours=1), 5.0),
                    (9, 1, 1, DAY + pd.Timedelta(hours=2), 5.0), (9, 2, 1, DAY + pd.Timedelta(hours=3), 5.0)])
    judged["is_gold"] = judged["pair_id"] == 9
    total_axis = plot_progress(judged, judgments_needed=4).axes[1]
    total, needed = total_axis.get_lines()
    assert max(total.get_ydata()) == 2  # the two gold checks are not votes on the queue's pairs
    assert list(needed.get_ydata()) == [6, 6]  # 2 made + 4 still needed
    assert plot_progress(judged.iloc[:0], judgments_needed=4).axes  # "no judgments yet"


def test_throughput_counts_only_judgments_made_in_the_app():
    now = DAY + pd.Timedelta(days=3)
    judged = frame([
        (1, 1, 1, now - pd.Timedelta(hours=2), 30.0),
        (1, 2, 1, now - pd.Timedelta(hours=30), 30.0),  # made in the app, but before the last 24 hours
        (2, 3, -1, now - pd.Timedelta(minutes=5), np.nan, "import"),  # imported a moment ago
        (2, 4, 1, now - pd.Timedelta(minutes=5), np.nan, "import"),
        (3, 5, 2, now - pd.Timedelta(hours=1), np.nan, "adjudication"),
    ])
    assert recent_throughput(judged, now=now) == (1, 1)
    assert recent_throughput(judged, window=pd.Timedelta(days=2), now=now) == (2, 2)
    assert recent_throughput(judged.iloc[:0], now=now) == (0, 0)
    table = judgments_over_time(judged, freq="D")
    assert table["judgments"].sum() == 2 and table["cumulative"].iloc[-1] == 2
    assert judgments_over_time(judged[judged["kind"] == "import"]).empty

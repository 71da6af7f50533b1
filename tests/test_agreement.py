"""Agreement statistics against textbook examples and reference libraries."""

import numpy as np
import pandas as pd
import pytest

from collect.agreement import (
    agreement_summary,
    agreement_tables,
    cohen_kappa,
    fleiss,
    fleiss_kappa,
    krippendorff,
    krippendorff_alpha,
    mean_cohen,
    pairwise_cohen,
)
from collect.errors import UserError

nan = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the worked example with missing values:
# 4 observers x 12 units; alpha = 0.743 nominal, 0.815 ordinal, 0.849 interval.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
    [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
]
# Fleiss' kappa worked example (10 subjects, 14 raters, 5 categories): kappa = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_cohen_kappa_textbook_table():
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15 -> p_o = 0.70, p_e = 0.50, kappa = 0.40.
    x = [1] * 25 + [0] * 25
    y = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(x, y) == pytest.approx(0.4)
    assert cohen_kappa(x, x) == pytest.approx(1.0)


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_weighted_cohen_kappa_matches_statsmodels(weights):
    from statsmodels.stats.inter_rater import cohens_kappa

    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, 300)
    b = np.clip(a + rng.integers(-2, 3, 300), 0, 4)
    table = np.zeros((5, 5))
    np.add.at(table, (a, b), 1)
    expected = cohens_kappa(table, wt=weights).kappa if weights else cohens_kappa(table).kappa
    assert cohen_kappa(a, b, categories=range(5), weights=weights) == pytest.approx(expected, abs=1e-12)


def test_fleiss_kappa_textbook_and_statsmodels():
    from statsmodels.stats.inter_rater import fleiss_kappa as reference

    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.2099, abs=1e-4)
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(reference(np.array(FLEISS_TABLE)), abs=1e-12)
    with pytest.raises(UserError):
        fleiss_kappa([[1, 0], [2, 0]])  # an item with one rating


@pytest.mark.parametrize("level,expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_worked_example(level, expected):
    import krippendorff as reference

    ours = krippendorff_alpha(KRIPPENDORFF_2011, level)
    assert ours == pytest.approx(expected, abs=5e-4)
    assert ours == pytest.approx(reference.alpha(reliability_data=KRIPPENDORFF_2011, level_of_measurement=level))


def _frame(matrix):
    """Judgments frame from a raters x units matrix of choices (NaN = not judged)."""
    rows = [
        {"pair_id": u, "rater_id": r, "choice": int(v)}
        for r, row in enumerate(matrix)
        for u, v in enumerate(row)
        if not np.isnan(v)
    ]
    return pd.DataFrame(rows)


def _random_panel(n_units=150, n_raters=5, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(-2, 3, n_units)
    matrix = np.clip(truth + rng.integers(-1, 2, (n_raters, n_units)), -2, 2).astype(float)
    matrix[rng.random((n_raters, n_units)) < 0.3] = nan  # not everyone judged everything
    return matrix


def test_frame_statistics_equal_matrix_statistics():
    import krippendorff as reference

    matrix = _random_panel()
    df = _frame(matrix)
    alpha = krippendorff(df, "ordinal", "choice", n_bootstrap=200)
    assert alpha.estimate == pytest.approx(
        reference.alpha(reliability_data=matrix, level_of_measurement="ordinal", value_domain=[-2, -1, 0, 1, 2])
    )
    assert alpha.ci_low < alpha.estimate < alpha.ci_high
    # Fleiss on the 5-point scale equals Fleiss of the count table built by hand.
    counts = np.stack([(matrix == v).sum(axis=0) for v in range(-2, 3)], axis=1)
    counts = counts[counts.sum(axis=1) >= 2]
    assert fleiss(df, "choice", n_bootstrap=0).estimate == pytest.approx(fleiss_kappa(counts))
    # Cohen per rater pair equals cohen_kappa on their common items.
    table = pairwise_cohen(df, "choice", min_overlap=1, n_bootstrap=100)
    assert len(table) == 10
    both = ~np.isnan(matrix[0]) & ~np.isnan(matrix[3])
    row = table[(table.rater_a == 0) & (table.rater_b == 3)].iloc[0]
    assert row.n_items == both.sum()
    assert row.kappa == pytest.approx(cohen_kappa(matrix[0][both], matrix[3][both], categories=range(-2, 3)))
    assert (table.ci_low <= table.kappa).all() and (table.kappa <= table.ci_high).all()


def test_bootstrap_interval_narrows_with_more_pairs_and_covers_truth():
    small = fleiss(_frame(_random_panel(n_units=60, seed=1)), n_bootstrap=500)
    large = fleiss(_frame(_random_panel(n_units=1500, seed=1)), n_bootstrap=500)
    assert (large.ci_high - large.ci_low) < 0.5 * (small.ci_high - small.ci_low)
    # Raters who copy each other agree perfectly; raters who answer at random agree at chance.
    rng = np.random.default_rng(5)
    copied = np.tile(rng.integers(-2, 3, 200), (3, 1)).astype(float)
    assert fleiss(_frame(copied), n_bootstrap=100).estimate == pytest.approx(1.0)
    noise = rng.integers(-2, 3, (4, 2000)).astype(float)
    random = krippendorff(_frame(noise), n_bootstrap=300)
    assert random.ci_low < 0 < random.ci_high


def test_summary_table_and_repeats_count_once():
    df = _frame(_random_panel(seed=2))
    repeat = df.iloc[:5].assign(choice=lambda d: -d["choice"])  # the same raters judging again, differently
    with_repeats = pd.concat([df, repeat], ignore_index=True)
    summary = agreement_summary(with_repeats, n_bootstrap=200, min_overlap=5)
    assert list(summary["statistic"]) == ["fleiss_kappa", "krippendorff_alpha", "mean_cohen_kappa"]
    assert summary.loc[0, "estimate"] == pytest.approx(fleiss(df, n_bootstrap=0).estimate)
    mean = mean_cohen(df, min_overlap=5, n_bootstrap=200)
    assert mean.estimate == pytest.approx(pairwise_cohen(df, min_overlap=5, n_bootstrap=0)["kappa"].mean())
    assert mean.ci_low < mean.estimate < mean.ci_high
    assert summary.loc[2, "estimate"] == pytest.approx(mean.estimate)


def test_agreement_tables_match_the_separate_calls():
    # One bootstrap of the Cohen's kappas serves both tables: every number is what the separate calls give.
    df = _frame(_random_panel(seed=4))
    summary, pairs = agreement_tables(df, n_bootstrap=150, min_overlap=5, seed=7)
    pd.testing.assert_frame_equal(summary, agreement_summary(df, n_bootstrap=150, min_overlap=5, seed=7))
    pd.testing.assert_frame_equal(pairs, pairwise_cohen(df, min_overlap=5, n_bootstrap=150, seed=7))
    assert summary.iloc[2].to_dict() == mean_cohen(df, min_overlap=5, n_bootstrap=150, seed=7).__dict__
    assert np.isfinite(summary.loc[2, ["ci_low", "ci_high"]].astype(float)).all()


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="choice"):
        fleiss(pd.DataFrame({"pair_id": [1, 1], "rater_id": [1, 2], "choice": [1, 7]}))
    with pytest.raises(UserError, match="missing column"):
        fleiss(pd.DataFrame({"pair_id": [1], "choice": [1]}))
    with pytest.raises(UserError, match="scale"):
        fleiss(pd.DataFrame({"pair_id": [1, 1], "rater_id": [1, 2], "choice": [1, 1]}), scale="stars")

"""Aggregation: the input contract, majority vote by hand, Dawid-Skene on simulated raters."""

import numpy as np
import pandas as pd
import pytest

from collect.aggregate import (
    AGGREGATE_COLUMNS,
    JUDGMENT_COLUMNS,
    aggregate,
    dawid_skene,
    majority_vote,
    validate_judgments,
)
from collect.errors import UserError


def judgments(rows):
    return pd.DataFrame(rows, columns=["pair_id", "rater_id", "choice"])


def simulate(accuracy, n_pairs=800, k=3, left_bias=None, seed=0):
    """Raters with planted probabilities of picking the right direction; a left-biased rater clicks the
    left side with the given probability and otherwise answers like a careful rater (0.9)."""
    rng = np.random.default_rng(seed)
    left_bias = left_bias or {}
    truth = rng.choice([-1, 1], size=n_pairs)
    rows = []
    for pair in range(n_pairs):
        for rater in rng.choice(len(accuracy), size=k, replace=False):
            left_is_a = bool(rng.random() < 0.5)
            if rater in left_bias and rng.random() < left_bias[rater]:
                d = 1 if left_is_a else -1
            else:
                q = 0.9 if rater in left_bias else accuracy[rater]
                d = truth[pair] if rng.random() < q else -truth[pair]
            rows.append({"pair_id": pair, "rater_id": int(rater), "choice": int(d * rng.choice([1, 2])),
                         "left_is_a": left_is_a})
    return pd.DataFrame(rows), truth


def accuracy_against(table, truth):
    predicted = table.sort_values("pair_id")["winner"].map({"A": 1, "B": -1, "tie": 0}).to_numpy()
    return float((predicted == truth).mean())


def test_contract_is_documented_and_validated():
    import collect.aggregate as module

    for column in JUDGMENT_COLUMNS:
        assert column in module.__doc__
    df = validate_judgments(judgments([(1, 1, 2)]))
    assert set(JUDGMENT_COLUMNS) <= set(df.columns)  # optional columns filled with "unknown"
    assert df.loc[0, "left_is_a"] is None and not df.loc[0, "is_gold"]
    with pytest.raises(UserError, match="missing column.*rater_id"):
        validate_judgments(pd.DataFrame({"pair_id": [1], "choice": [1]}))
    with pytest.raises(UserError, match="row 1: column 'choice': 3"):
        validate_judgments(judgments([(1, 1, 1), (1, 2, 3)]))
    with pytest.raises(UserError, match="row 0: column 'choice': 0.5"):
        validate_judgments(judgments([(1, 1, 0.5)]))
    with pytest.raises(UserError, match="row 0: column 'rater_id' is empty"):
        validate_judgments(judgments([(1, None, 1)]))
    with pytest.raises(UserError, match="left_is_a"):
        validate_judgments(judgments([(1, 1, 1)]).assign(left_is_a=["left"]))
    with pytest.raises(UserError, match="gold_choice"):
        validate_judgments(judgments([(1, 1, 1)]).assign(is_gold=True, gold_choice=5))
    with pytest.raises(UserError, match="method"):
        aggregate(judgments([(1, 1, 1)]), method="median")


def test_majority_vote_by_hand():
    table = majority_vote(judgments([
        (1, 1, 2), (1, 2, 1), (1, 3, -1),  # A wins 2 to 1
        (2, 1, 1), (2, 2, -1), (2, 3, 0),  # one vote each: strengths sum to 0 -> tie
        (3, 1, 1), (3, 2, -2),  # one each, B>>A outweighs A>B -> B
        (4, 1, -1),
    ])).set_index("pair_id")
    assert list(table.reset_index().columns) == list(AGGREGATE_COLUMNS)
    assert list(table["winner"]) == ["A", "tie", "B", "B"]
    assert table.loc[1, "confidence"] == pytest.approx(2 / 3)
    assert table.loc[1, "agreement"] == pytest.approx(2 / 3)
    assert table.loc[1, "margin"] == pytest.approx((1.0 + 0.5 - 0.5) / 3)
    assert table.loc[2, "margin"] == 0 and table.loc[2, "agreement"] == pytest.approx(1 / 3)
    assert table.loc[3, "margin"] == pytest.approx((-0.5 + 1.0) / 2)
    assert table.loc[3, "confidence"] == pytest.approx(0.5)
    assert table.loc[4, "margin"] == pytest.approx(0.5) and table.loc[4, "n_judgments"] == 1


def test_margin_is_floored_at_zero():
    # A wins on votes but B's one vote is strong: mean strength toward A is (0.5 + 0.5 - 1.0 - 1.0) / 4 < 0.
    table = majority_vote(judgments([(1, 1, 1), (1, 2, 1), (1, 3, 1), (1, 4, -2), (1, 5, -2)]))
    assert table.loc[0, "winner"] == "A"
    assert table.loc[0, "margin"] == 0.0


def test_dawid_skene_recovers_planted_reliabilities():
    planted = np.array([0.95, 0.9, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.5])
    df, truth = simulate(planted, n_pairs=1500, seed=1)
    fit = dawid_skene(df)
    assert fit.converged
    estimated = fit.raters.set_index("rater_id")["reliability"].sort_index().to_numpy()
    # About 450 judgments per rater: a standard error near 0.02, so 0.07 is over three of them.
    assert np.abs(estimated - planted).max() < 0.07
    assert np.corrcoef(estimated, planted)[0, 1] > 0.95
    # Posteriors are calibrated: the mean confidence matches the share of pairs that are right,
    # and the confident pairs are nearly all right.
    pairs = fit.pairs.sort_values("pair_id")
    confidence = pairs["confidence"].to_numpy()
    right = pairs["winner"].map({"A": 1, "B": -1, "tie": 0}).to_numpy() == truth
    assert abs(confidence.mean() - right.mean()) < 0.03
    assert right[confidence > 0.95].mean() > 0.95


def test_weighted_beats_majority_with_spammers_and_a_side_clicker():
    accuracy = [0.9] * 6 + [0.5] * 3 + [0.9]
    df, truth = simulate(accuracy, n_pairs=800, left_bias={9: 0.9}, seed=2)
    majority = aggregate(df, "majority")
    weighted = aggregate(df, "weighted")
    assert accuracy_against(weighted, truth) > accuracy_against(majority, truth) + 0.03
    fit = dawid_skene(df)
    reliability = fit.raters.set_index("rater_id")["reliability"]
    assert reliability[9] < 0.65 < reliability[[0, 1, 2, 3, 4, 5]].min()  # clicking left is not skill
    assert (weighted["confidence"].between(0, 1)).all() and (weighted["margin"] >= 0).all()
    assert list(weighted.columns) == list(AGGREGATE_COLUMNS)


def test_gold_pairs_keep_their_answer_and_spammers_do_not_set_margins():
    df, _ = simulate([0.9] * 5 + [0.5] * 3, n_pairs=400, seed=3)
    gold_pairs = [0, 1, 2]
    df["is_gold"] = df["pair_id"].isin(gold_pairs)
    df["gold_choice"] = np.where(df["is_gold"], -1, None)
    fit = dawid_skene(df)
    gold = fit.pairs.set_index("pair_id").loc[gold_pairs]
    assert (gold["winner"] == "B").all() and (gold["confidence"] == 1.0).all()
    # A pair where two spammers say B>>A and one careful rater says A>B: A wins, margin from the careful one.
    extra = pd.DataFrame({"pair_id": 10_000, "rater_id": [0, 5, 6], "choice": [1, -2, -2], "left_is_a": True})
    table = aggregate(pd.concat([df, extra], ignore_index=True), "weighted").set_index("pair_id")
    assert table.loc[10_000, "winner"] == "A"
    # Spammers weigh (almost) nothing: the margin is near the careful rater's 0.5, not the plain mean's 0.
    assert 0.25 < table.loc[10_000, "margin"] <= 0.5
    assert table.loc[10_000, "agreement"] == pytest.approx(1 / 3)


def test_ties_found_where_raters_see_them_and_not_invented():
    rng = np.random.default_rng(4)
    truth = rng.choice([-1, 0, 1], size=800, p=[0.35, 0.3, 0.35])
    kinds = ["good"] * 12 + ["spammer"] * 6
    rows = []
    for pair in range(len(truth)):
        for rater in rng.choice(len(kinds), size=3, replace=False):
            if kinds[rater] == "spammer":
                choice = int(rng.integers(-2, 3))
            elif truth[pair] == 0:  # equally good: mostly "tie", else a weak choice either way
                choice = 0 if rng.random() < 0.7 else int(rng.choice([-1, 1]))
            else:
                choice = int((truth[pair] if rng.random() < 0.9 else -truth[pair]) * rng.choice([1, 2]))
            rows.append({"pair_id": pair, "rater_id": int(rater), "choice": choice,
                         "left_is_a": bool(rng.random() < 0.5)})
    df = pd.DataFrame(rows)
    verdicts = {m: aggregate(df, m).sort_values("pair_id")["winner"].map({"A": 1, "B": -1, "tie": 0}).to_numpy()
                for m in ("majority", "weighted")}
    assert (verdicts["weighted"] == truth).mean() > (verdicts["majority"] == truth).mean() + 0.03
    assert (verdicts["weighted"][truth == 0] == 0).mean() > 0.8  # real ties recovered
    # Without true ties, spammers' mixed votes must not turn into tie verdicts.
    no_ties = df[truth[df["pair_id"]] != 0]
    assert (aggregate(no_ties, "weighted")["winner"] == "tie").mean() < 0.02

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


def test_a_tie_for_the_most_votes_is_decided_between_the_leaders_only():
    # A and tie lead with three votes each; B's two strong votes would tip a sum over every vote to B, a side
    # fewer raters chose than either leader.
    table = majority_vote(judgments([(1, rater, choice) for rater, choice in
                                     enumerate([1, 1, 1, 0, 0, 0, -2, -2], start=1)]))
    assert table.loc[0, "winner"] == "A" and table.loc[0, "confidence"] == pytest.approx(3 / 8)


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


# Sparse overlap: most pairs judged once, most raters with a handful of judgments, sides unknown. These are
# the first 60 rows of summarize-from-feedback batch 13 as `prefloop import` stores them
# (pair_id, rater_id, choice): 44 pairs, 23 workers, 53% of votes for A.
SUMMARIZE_60 = [
    (1, 2, 1), (2, 3, -1), (3, 2, -1), (4, 4, 1), (5, 5, 2), (6, 6, 1), (7, 7, 2), (8, 8, 1), (9, 9, -1),
    (9, 10, -2), (9, 11, -1), (9, 12, -1), (9, 13, 1), (10, 14, -1), (11, 15, 2), (12, 5, -1), (13, 14, 1),
    (14, 15, -1), (15, 16, 1), (15, 17, 1), (16, 18, 1), (17, 13, 1), (18, 15, -1), (19, 2, 1), (20, 7, 2),
    (21, 11, 2), (22, 10, 1), (22, 19, -2), (22, 20, -1), (22, 13, -1), (22, 18, 1), (22, 2, -2), (22, 7, -1),
    (22, 3, -1), (23, 11, 1), (24, 10, -2), (25, 7, 2), (26, 10, -1), (27, 9, 2), (28, 10, -2), (29, 7, 1),
    (30, 21, -2), (31, 22, 2), (32, 9, 2), (33, 19, -2), (34, 23, 1), (35, 22, -1), (35, 11, 1), (35, 13, 1),
    (35, 9, -1), (35, 7, 1), (36, 24, 1), (37, 18, -2), (38, 18, 1), (39, 7, -2), (40, 18, 2), (41, 10, -1),
    (42, 12, -1), (43, 23, 2), (44, 9, -1),
]


def sparse(n_pairs=300, n_raters=30, shared=0.1, p_a=0.6, seed=0):
    """Raters right 80% of the time; a pair is judged by 3-5 raters with probability `shared`, else by one;
    A is the better response with probability `p_a` (as when a source lists its preferred response first)."""
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random(n_pairs) < p_a, 1, -1)
    rows = []
    for pair in range(n_pairs):
        k = rng.integers(3, 6) if rng.random() < shared else 1
        for rater in rng.choice(n_raters, size=k, replace=False):
            d = truth[pair] if rng.random() < 0.8 else -truth[pair]
            rows.append((pair, int(rater), int(d * rng.choice([1, 2]))))
    return judgments(rows)


def lone_judgments_against_their_rater(df):
    """Pairs with one judgment whose weighted winner is not that judgment's direction, with the rater's
    estimated reliability: none should exist for a rater better than chance."""
    fit = dawid_skene(df)
    table = aggregate(df, "weighted").set_index("pair_id")
    lone = df.groupby("pair_id").filter(lambda g: len(g) == 1).set_index("pair_id")
    said = lone["choice"].map(lambda c: "A" if c > 0 else "B" if c < 0 else "tie")
    against = said[table.loc[said.index, "winner"] != said]
    reliability = fit.raters.set_index("rater_id")["reliability"]
    return [(pair, reliability[lone.loc[pair, "rater_id"]]) for pair in against.index]


def test_sparse_overlap_a_lone_judgment_keeps_its_raters_side():
    # A pair judged once carries no evidence against its judgment: the model may not reverse it on the
    # strength of a learned "A usually wins" (the fit once learned P(A better) = 0.87 from 53% of votes for
    # A here, and exported 16 of these pairs against their only judgment with confidence 0.78-0.99).
    df = judgments(SUMMARIZE_60)
    assert lone_judgments_against_their_rater(df) == []
    fit = dawid_skene(df)
    assert fit.class_prior[0] == pytest.approx(fit.class_prior[2])  # A and B equally likely a priori
    assert (fit.raters["reliability"] > 0.5).all()
    # Nothing here tells one rater from another, so weighted is majority.
    weighted, majority = aggregate(df, "weighted"), majority_vote(df)
    assert (weighted["winner"] == majority["winner"]).all()
    # The same on simulated panels of the same shape, where A is truly better 60% of the time.
    for seed in range(3):
        assert lone_judgments_against_their_rater(sparse(seed=seed)) == []
    # A lone tie stays a tie.
    table = aggregate(pd.concat([df, judgments([(99, 2, 0)])]), "weighted").set_index("pair_id")
    assert table.loc[99, "winner"] == "tie" and table.loc[99, "agreement"] == 1.0


def test_lone_labels_do_not_vouch_for_their_own_rater():
    # An imported dataset: one label per pair, from one source. Nothing shows whether that source is right, so
    # its verdicts are as sure as an average rater's vote, not 0.99 (which made --min-confidence filter nothing).
    lone = judgments([(pair, 1, 1 if pair % 4 else -1) for pair in range(200)])
    table = aggregate(lone, "weighted")
    assert table["confidence"].max() < 0.8
    assert table["confidence"].nunique() == 1  # every lone vote is worth the same
    # Gold pairs that the same source gets right (90%) are evidence: its lone labels then become sure.
    rng = np.random.default_rng(0)
    truth = rng.choice([-1, 1], size=100)
    gold = judgments([(1000 + i, 1, int(t if rng.random() < 0.9 else -t)) for i, t in enumerate(truth)])
    gold = gold.assign(is_gold=True, gold_choice=truth)
    both = pd.concat([lone.assign(is_gold=False, gold_choice=None), gold], ignore_index=True)
    vouched = aggregate(both, "weighted").set_index("pair_id").loc[range(200)]
    assert vouched["confidence"].min() > table["confidence"].max() + 0.05


def test_four_raters_who_agree_are_not_outvoted_by_one_without_evidence():
    # Pair 9 of the summarize slice: four workers say B, one says A. None of them has shared more than a
    # few pairs with anyone, so none can be told apart from an average rater: B, with confidence.
    table = aggregate(judgments(SUMMARIZE_60), "weighted").set_index("pair_id")
    assert table.loc[9, "winner"] == "B" and table.loc[9, "confidence"] > 0.9
    assert table.loc[9, "agreement"] == pytest.approx(0.8)
    # Pair 35: three for A, two for B. Votes for A are 53% of all votes, but with the sides unknown that
    # lean cannot be told from a side bias, so a vote for B does not count for more than a vote for A.
    assert table.loc[35, "winner"] == "A"


def test_raters_worse_than_chance_on_much_evidence_are_outvoted():
    # The exception: four raters who got 50 gold pairs each mostly backwards (85% wrong) say B; one rater
    # who got them mostly right says A. Their "B" is evidence for A.
    rng = np.random.default_rng(5)
    rows, gold = [], []
    for pair in range(50):
        truth = 1 if pair % 2 else -1
        for rater in range(5):
            right = rng.random() < (0.9 if rater == 0 else 0.15)
            rows.append((pair, rater, int((truth if right else -truth) * rng.choice([1, 2]))))
        gold += [truth] * 5
    df = judgments(rows).assign(is_gold=True, gold_choice=gold)
    contested = judgments([(100, 0, 1), (100, 1, -1), (100, 2, -1), (100, 3, -1), (100, 4, -1)])
    both = pd.concat([df, contested.assign(is_gold=False, gold_choice=None)], ignore_index=True)
    reliability = dawid_skene(both).raters.set_index("rater_id")["reliability"]
    assert reliability[0] > 0.7 and (reliability[[1, 2, 3, 4]] < 0.3).all()
    table = aggregate(both, "weighted").set_index("pair_id")
    assert table.loc[100, "winner"] == "A" and table.loc[100, "confidence"] > 0.9

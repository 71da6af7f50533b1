"""Per-rater quality statistics by hand on small frames, and the flags on a simulated team."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from collect.rater_quality import (
    QualityConfig,
    config_table,
    consensus_agreement,
    contradicts,
    criteria_contradictions,
    gold_accuracy,
    holm,
    length_bias,
    position_bias,
    rater_table,
    speed,
    swap_consistency,
)


def frame(rows, **columns):
    df = pd.DataFrame(rows, columns=["pair_id", "rater_id", "choice"])
    for name, values in columns.items():
        df[name] = values
    return df


def test_gold_accuracy_by_hand():
    df = frame(
        [(1, 1, 2), (2, 1, 1), (3, 1, -1), (4, 1, 0), (5, 1, 1), (1, 2, 1)],
        is_gold=[True, True, True, True, False, True],
        gold_choice=[1, 2, 1, 0, None, -2],
    )
    table = gold_accuracy(df)
    # Rater 1: pairs 1, 2 right (A), pair 3 wrong, pair 4 tie right; pair 5 is not gold.
    assert table.loc[1, "n_gold"] == 4 and table.loc[1, "gold_accuracy"] == pytest.approx(0.75)
    assert table.loc[2, "n_gold"] == 1 and table.loc[2, "gold_accuracy"] == 0.0
    # P(at most 3 right of 4 | accuracy 0.7) and P(0 of 1 | 0.7), one-sided.
    assert table.loc[1, "gold_p"] == pytest.approx(1 - 0.7**4)
    assert table.loc[2, "gold_p"] == pytest.approx(0.3)


def test_consensus_leaves_the_rater_out():
    df = frame([
        (1, 1, 1), (1, 2, 2), (1, 3, -1),  # r1: others A,B split -> no consensus; r3: others A,A -> disagrees
        (2, 1, 1), (2, 2, 1), (2, 3, 1),  # everyone agrees
        (3, 1, -1),  # alone: no others
    ])
    table = consensus_agreement(df)
    assert table.loc[1, "n_consensus"] == 1 and table.loc[1, "consensus_agreement"] == 1.0
    assert table.loc[2, "n_consensus"] == 1 and table.loc[2, "consensus_agreement"] == 1.0
    assert table.loc[3, "n_consensus"] == 2 and table.loc[3, "consensus_agreement"] == 0.5


def test_position_bias_binomial_test_with_holm():
    rng = np.random.default_rng(0)
    sides = rng.random(60) < 0.5
    # Rater 1 picks the left side 18 times in 20 non-tie judgments (and one tie, which does not count);
    # rater 2 alternates sides exactly; rater 3's judgments have no known side.
    left = [1] * 18 + [0] * 2
    rows, left_is_a = [], []
    for i, picked_left in enumerate(left):
        rows.append((i, 1, (1 if sides[i] else -1) * (1 if picked_left else -1)))
        left_is_a.append(bool(sides[i]))
    rows.append((99, 1, 0)), left_is_a.append(True)
    for i in range(20):
        rows.append((i, 2, (1 if sides[20 + i] else -1) * (1 if i % 2 else -1)))
        left_is_a.append(bool(sides[20 + i]))
    rows.append((0, 3, 1)), left_is_a.append(None)
    table = position_bias(frame(rows, left_is_a=left_is_a))
    assert table.loc[1, "n_sided"] == 20 and table.loc[1, "left_share"] == pytest.approx(0.9)
    p1, p2 = stats.binomtest(18, 20).pvalue, stats.binomtest(10, 20).pvalue
    assert table.loc[1, "position_p"] == pytest.approx(min(1, 2 * p1))  # Holm: smallest of two times 2
    assert table.loc[2, "position_p"] == pytest.approx(max(min(1, 2 * p1), p2))
    assert table.loc[3, "n_sided"] == 0 and np.isnan(table.loc[3, "position_p"])


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = pd.Series([0.01, 0.04, 0.03, np.nan, 0.2, 0.001])
    ours = holm(p)
    reference = multipletests(p.dropna(), method="holm")[1]
    assert np.allclose(ours.dropna().to_numpy(), reference)
    assert np.isnan(ours[3])


def test_swap_consistency_same_pair_and_swapped_pair():
    # Rater 1 sees pair 1 twice with sides swapped and keeps the answer; rater 2 clicks left both times,
    # so the direction flips; rater 3's repeat was on the same side, which proves nothing and is not counted.
    df = frame(
        [(1, 1, 1), (1, 1, 2), (1, 2, 1), (1, 2, -1), (1, 3, 1), (1, 3, -1)],
        left_is_a=[True, False, True, False, True, True],
    )
    table = swap_consistency(df)
    assert table.loc[1, "n_repeats"] == 1 and table.loc[1, "consistency"] == 1.0
    assert table.loc[2, "n_repeats"] == 1 and table.loc[2, "consistency"] == 0.0
    assert table.loc[3, "n_repeats"] == 0 and np.isnan(table.loc[3, "consistency"])
    # A repeat as a separate pair with the responses swapped (pair 2 = pair 1 mirrored): B>A there is A>B here.
    df = frame([(1, 1, 1), (2, 1, -2), (1, 2, 1), (2, 2, 1)],
               left_is_a=[True, True, True, True], response_a_id=[10, 11, 10, 11], response_b_id=[11, 10, 11, 10])
    table = swap_consistency(df)
    assert table.loc[1, "consistency"] == 1.0 and table.loc[2, "consistency"] == 0.0


def test_speed_by_hand():
    df = frame([(i, 1, 1) for i in range(4)] + [(i, 2, 1) for i in range(4)] + [(9, 3, 1)],
               active_seconds=[30, 40, 50, 60, 2, 3, 4, 100, np.nan])
    table = speed(df, speeder_ratio=0.33)
    overall = np.median([30, 40, 50, 60, 2, 3, 4, 100])  # 35
    assert table.loc[1, "median_seconds"] == 45 and table.loc[1, "speed_ratio"] == pytest.approx(45 / overall)
    assert table.loc[2, "median_seconds"] == 3.5 and table.loc[2, "fast_share"] == 0.75  # under 11.55 s
    assert table.loc[3, "n_timed"] == 0 and np.isnan(table.loc[3, "median_seconds"])


def test_length_bias_against_the_other_raters():
    # Rater 1 picks the longer response in 9 of 10; rater 2 (even pairs) in 3 of 5; rater 3 (odd) in 2 of 5.
    # Ties and equal lengths do not count.
    rows, len_a, len_b = [], [], []
    for i in range(10):
        rows.append((i, 1, 1 if i < 9 else -1)), len_a.append(200), len_b.append(100)
        rows.append((i, 2 + i % 2, 1 if i < 5 else -1)), len_a.append(200), len_b.append(100)
    rows += [(20, 1, 0), (21, 1, 1)]
    len_a += [50, 70]
    len_b += [10, 70]
    table = length_bias(frame(rows, len_a=len_a, len_b=len_b))
    assert table.loc[1, "n_length"] == 10 and table.loc[1, "longer_share"] == 0.9
    # The yardstick is the median of the others' shares: for rater 1, of 0.6 and 0.4.
    assert list(table["others_longer_share"]) == pytest.approx([0.5, (0.9 + 0.4) / 2, (0.9 + 0.6) / 2])
    raw = {1: stats.binomtest(9, 10, 0.5).pvalue, 2: stats.binomtest(3, 5, 0.65).pvalue,
           3: stats.binomtest(2, 5, 0.75).pvalue}
    order = sorted(raw, key=raw.get)
    adjusted, running = {}, 0.0
    for rank, rater in enumerate(order):  # Holm by hand
        running = max(running, min(1.0, (3 - rank) * raw[rater]))
        adjusted[rater] = running
    for rater in (1, 2, 3):
        assert table.loc[rater, "length_p"] == pytest.approx(adjusted[rater])


def test_criteria_contradictions():
    assert contradicts(2, {"helpful": -1, "honest": 0})
    assert not contradicts(2, {"helpful": -1, "honest": 1})  # mixed criteria may add up either way
    assert not contradicts(0, {"helpful": -2})
    assert not contradicts(-1, None) and not contradicts(1, {})
    df = frame([(1, 1, 1), (2, 1, 1), (3, 1, -1), (4, 1, 1)],
               criteria=[{"a": -1}, {"a": 1}, {"a": 2, "b": 1}, None])
    table = criteria_contradictions(df)
    assert table.loc[1, "n_criteria"] == 3 and table.loc[1, "contradiction_rate"] == pytest.approx(2 / 3)


def simulated_team(seed=0, n_pairs=400, k=3):
    """Six careful raters and one of each failure mode, with gold pairs, repeats, times and criteria."""
    rng = np.random.default_rng(seed)
    kinds = {r: "good" for r in range(6)} | {6: "spammer", 7: "left", 8: "speeder", 9: "longer", 10: "liar"}
    truth = rng.choice([-1, 1], size=n_pairs)
    len_a, len_b = rng.integers(100, 1000, n_pairs), rng.integers(100, 1000, n_pairs)
    gold = rng.random(n_pairs) < 0.25
    rows = []

    opinions = {}  # a careful rater's view of a pair: shown it again, they mostly say the same

    def judge(pair, rater, left_is_a):
        kind = kinds[rater]
        if kind == "spammer":
            return int(rng.integers(-2, 3))
        if kind == "left":
            return int((1 if left_is_a else -1) * rng.choice([1, 2]))
        if (pair, rater) not in opinions or rng.random() < 0.05:
            if kind == "longer" and rng.random() < 0.8:
                d = 1 if len_a[pair] > len_b[pair] else -1
            else:
                d = truth[pair] if rng.random() < 0.95 else -truth[pair]
            opinions[pair, rater] = int(d * rng.choice([1, 2]))
        return opinions[pair, rater]

    for pair in range(n_pairs):
        for rater in rng.choice(len(kinds), size=k, replace=False):
            for repeat in range(2 if rng.random() < 0.1 else 1):
                left_is_a = bool(rng.random() < 0.5) if repeat == 0 else not rows[-1]["left_is_a"]
                choice = judge(pair, rater, left_is_a)
                criterion = -np.sign(choice) if kinds[rater] == "liar" else np.sign(choice)
                rows.append({
                    "pair_id": pair, "rater_id": int(rater), "choice": choice, "left_is_a": left_is_a,
                    "active_seconds": rng.lognormal(np.log(4 if kinds[rater] == "speeder" else 40), 0.4),
                    "len_a": len_a[pair], "len_b": len_b[pair],
                    "is_gold": bool(gold[pair]), "gold_choice": int(truth[pair]) if gold[pair] else None,
                    "criteria": {"helpfulness": int(criterion)} if choice else None,
                })
    return pd.DataFrame(rows), kinds


def test_rater_table_flags_each_failure_mode():
    df, kinds = simulated_team()
    table = rater_table(df).set_index("rater_id")
    expected_columns = {"n_judgments", "gold_accuracy", "consensus_agreement", "left_share", "position_p",
                        "consistency", "median_seconds", "speed_ratio", "longer_share", "contradiction_rate",
                        "reliability", "flags"}
    assert expected_columns <= set(table.columns)
    flags = table["flags"].str.split(",")
    for rater in range(6):
        assert table.loc[rater, "flags"] == "", (rater, table.loc[rater].to_dict())
    assert {"gold", "consensus", "unreliable"} <= set(flags[6])
    assert {"position", "inconsistent", "unreliable"} <= set(flags[7])
    assert flags[8] == ["speeder"]
    assert "length" in flags[9] and "position" not in flags[9]
    assert flags[10] == ["criteria"]
    # Thresholds are settings: a stricter speed rule flags nobody as a speeder.
    strict = rater_table(df, QualityConfig(speeder_ratio=0.05))
    assert not strict["flags"].str.contains("speeder").any()
    assert "speeder_ratio" in set(config_table()["setting"])

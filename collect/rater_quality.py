"""Per-rater quality: gold accuracy, agreement with the others, position bias, swap consistency, speed,
length bias, criteria that contradict the overall choice; `rater_table` joins them with flags.

Each statistic is one function over a judgments frame (collect.aggregate.JUDGMENT_COLUMNS) that returns one
row per rater, indexed by rater_id, with the number of judgments it rests on next to it: a rate over three
judgments means little, and flags are only raised once `QualityConfig`'s minimum counts are met.
Directions: +1 the rater preferred A, 0 tie, -1 B.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from collect.aggregate import dawid_skene, direction, validate_judgments


@dataclass
class QualityConfig:
    """Thresholds for `rater_table`'s flags. A flag needs both the evidence (a minimum count) and the effect.

    min_gold_accuracy: flag "gold" when the share of gold pairs answered in the right direction is below this
        and significantly so: a one-sided binomial test against this share gives p < gold_alpha (a rater who
        is right 90% of the time still gets 3 of 5 wrong now and then).
    min_gold: gold judgments needed before "gold" can be raised.
    gold_alpha: significance level of that test.
    min_consensus: flag "consensus" when agreement with the other raters' majority is below this (a rater
        answering at random agrees about 40% of the time on the five-point buttons).
    min_consensus_n: judgments with a clear majority among the others needed for "consensus".
    alpha: significance level for the binomial (position) and Fisher (length) tests, after Holm's
        correction across raters so that a large team does not flag someone by chance.
    min_position_effect: "position" also needs the share of left choices this far from 50%.
    min_sided: non-tie judgments with a known side needed for "position".
    min_consistency: flag "inconsistent" when the share of repeated pairs (shown with sides swapped) answered
        in the same direction is below this.
    min_repeats: repeated pairs needed for "inconsistent".
    speeder_ratio: flag "speeder" when the rater's median active seconds is below this fraction of the
        median of everyone's judgments.
    min_timed: timed judgments needed for "speeder".
    min_length_effect: "length" also needs the share preferring the longer response to differ from the
        median of the other raters' shares by this much.
    min_length_n: non-tie judgments of pairs with different lengths needed for "length".
    max_contradiction_rate: flag "criteria" when more than this share of judgments with criteria has the
        criteria pointing against the overall choice.
    min_criteria: judgments with criteria needed for "criteria".
    min_reliability: flag "unreliable" when the Dawid-Skene reliability (balanced over sides) is below this.
    min_reliability_n: judgments needed for "unreliable".
    """

    min_gold_accuracy: float = 0.7
    min_gold: int = 5
    gold_alpha: float = 0.05
    min_consensus: float = 0.5
    min_consensus_n: int = 10
    alpha: float = 0.01
    min_position_effect: float = 0.1
    min_sided: int = 10
    min_consistency: float = 0.7
    min_repeats: int = 5
    speeder_ratio: float = 0.33
    min_timed: int = 5
    min_length_effect: float = 0.15
    min_length_n: int = 10
    max_contradiction_rate: float = 0.2
    min_criteria: int = 5
    min_reliability: float = 0.6
    min_reliability_n: int = 20


def _by_rater(df: pd.DataFrame, values: dict[str, pd.Series | np.ndarray]) -> pd.DataFrame:
    """Per-rater sum of the given 0/1 (or numeric) columns, over the rows of df."""
    frame = pd.DataFrame({name: np.asarray(v, dtype=float) for name, v in values.items()})
    frame["rater_id"] = df["rater_id"].to_numpy()
    return frame.groupby("rater_id").sum()


def _raters(df: pd.DataFrame) -> pd.Index:
    return pd.Index(np.sort(df["rater_id"].unique()), name="rater_id")


def holm(p_values: pd.Series) -> pd.Series:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = p_values.dropna().sort_values()
    m = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p.to_numpy() * (m - np.arange(m))))
    return pd.Series(adjusted, index=p.index).reindex(p_values.index)


def gold_accuracy(judgments: pd.DataFrame, target: float = QualityConfig.min_gold_accuracy) -> pd.DataFrame:
    """n_gold, gold_accuracy, gold_p: share of the rater's gold judgments in the known answer's direction, and
    the one-sided binomial p-value of "their true accuracy is at least `target`"."""
    df = validate_judgments(judgments)
    gold = df[df["is_gold"] & df["gold_choice"].notna()]
    right = direction(gold["choice"]) == direction(pd.to_numeric(gold["gold_choice"]).astype(int))
    sums = _by_rater(gold, {"n_gold": np.ones(len(gold)), "right": right})
    out = sums.reindex(_raters(df), fill_value=0)
    out["gold_accuracy"] = out["right"] / out["n_gold"].where(out["n_gold"] > 0)
    out["gold_p"] = [stats.binomtest(int(k), int(n), target, alternative="less").pvalue if n > 0 else np.nan
                     for k, n in zip(out["right"], out["n_gold"])]
    return out[["n_gold", "gold_accuracy", "gold_p"]].astype({"n_gold": int})


def consensus_agreement(judgments: pd.DataFrame) -> pd.DataFrame:
    """n_consensus, consensus_agreement: how often the rater's direction matches the others' majority.

    For each judgment, the other raters' directions on the same pair are tallied (the rater left out); only
    judgments where one direction has strictly more of those votes than any other enter.
    """
    df = _first_judgments(validate_judgments(judgments))
    codes, _ = pd.factorize(df["pair_id"])
    d = direction(df["choice"]) + 1
    votes = np.zeros((codes.max() + 1, 3))
    np.add.at(votes, (codes, d), 1.0)
    others = votes[codes].copy()
    others[np.arange(len(df)), d] -= 1
    top = others.max(axis=1)
    clear = (top > 0) & ((others == top[:, None]).sum(axis=1) == 1)
    agree = clear & (others.argmax(axis=1) == d)
    sums = _by_rater(df, {"n_consensus": clear, "agree": agree}).reindex(_raters(df), fill_value=0)
    sums["consensus_agreement"] = sums["agree"] / sums["n_consensus"].where(sums["n_consensus"] > 0)
    return sums[["n_consensus", "consensus_agreement"]].astype({"n_consensus": int})


def _first_judgments(df: pd.DataFrame) -> pd.DataFrame:
    """Each rater's first judgment of each pair (repeats are for `swap_consistency`)."""
    if df["submitted_at"].notna().any():
        df = df.sort_values("submitted_at", kind="stable")
    return df.drop_duplicates(["pair_id", "rater_id"], keep="first")


def position_bias(judgments: pd.DataFrame) -> pd.DataFrame:
    """n_sided, left_share, position_p: share of non-tie choices for the left side, binomial test vs 50%.

    Sides are drawn at random for each assignment, so an unbiased rater picks left about half the time
    whatever the pairs. position_p is two-sided and Holm-adjusted across raters. Judgments whose side is
    unknown (imported) do not enter.
    """
    df = validate_judgments(judgments)
    sided = df[df["left_is_a"].notna() & (df["choice"] != 0)]
    left = (sided["choice"] > 0).to_numpy() == sided["left_is_a"].astype(bool).to_numpy()
    out = _by_rater(sided, {"n_sided": np.ones(len(sided)), "left": left}).reindex(_raters(df), fill_value=0)
    out["left_share"] = out["left"] / out["n_sided"].where(out["n_sided"] > 0)
    raw = pd.Series(
        [stats.binomtest(int(k), int(n), 0.5).pvalue if n > 0 else np.nan for k, n in zip(out["left"], out["n_sided"])],
        index=out.index,
    )
    out["position_p"] = holm(raw)
    return out[["n_sided", "left_share", "position_p"]].astype({"n_sided": int})


def swap_consistency(judgments: pd.DataFrame) -> pd.DataFrame:
    """n_repeats, consistency: share of repeated pairs the rater answered in the same direction both times.

    A repeat is the same rater judging the same two responses again: the same pair_id, or, when the frame
    has response_a_id and response_b_id, another pair with the same two responses (possibly A and B
    swapped; choices are turned to face the same way). Only repeats shown with the sides swapped on screen
    (or with sides unknown) count: a repeat on the same side cannot tell a side-clicker from a careful rater.
    Each later judgment is compared with the rater's first.
    """
    df = validate_judgments(judgments)
    if {"response_a_id", "response_b_id"} <= set(df.columns) and df[["response_a_id", "response_b_id"]].notna().all().all():
        ra, rb = df["response_a_id"].to_numpy(), df["response_b_id"].to_numpy()
        key = pd.Series(list(zip(np.minimum(ra, rb), np.maximum(ra, rb))), index=df.index).astype(str)
        facing = np.where(ra <= rb, 1, -1)  # +1: A is the item's first response
    else:
        key = df["pair_id"].astype(str)
        facing = np.ones(len(df), dtype=int)
    oriented = direction(df["choice"]) * facing
    # Which of the item's two responses was on the left (None when unknown).
    first_left = [None if s is None else bool(s) == (f > 0) for s, f in zip(df["left_is_a"], facing)]
    frame = pd.DataFrame({"rater_id": df["rater_id"].to_numpy(), "key": key.to_numpy(), "dir": oriented,
                          "first_left": first_left, "t": df["submitted_at"].to_numpy()})
    if frame["t"].notna().any():
        frame = frame.sort_values("t", kind="stable")
    first = frame.groupby(["rater_id", "key"]).head(1).set_index(["rater_id", "key"])
    later = frame[frame.duplicated(["rater_id", "key"], keep="first")]
    base = first.loc[list(zip(later["rater_id"], later["key"]))]
    swapped = np.array([a is None or b is None or a != b for a, b in zip(later["first_left"], base["first_left"])],
                       dtype=bool)
    same = later["dir"].to_numpy() == base["dir"].to_numpy()
    later = later.assign(counted=swapped.astype(float), same=(same & swapped).astype(float))
    out = later.groupby("rater_id")[["counted", "same"]].sum().reindex(_raters(df), fill_value=0)
    out["consistency"] = out["same"] / out["counted"].where(out["counted"] > 0)
    return out.rename(columns={"counted": "n_repeats"})[["n_repeats", "consistency"]].astype({"n_repeats": int})


def speed(judgments: pd.DataFrame, speeder_ratio: float = QualityConfig.speeder_ratio) -> pd.DataFrame:
    """n_timed, median_seconds, speed_ratio (rater median / everyone's median), fast_share.

    fast_share: share of the rater's timed judgments under `speeder_ratio` times everyone's median.
    """
    df = validate_judgments(judgments)
    timed = df[df["active_seconds"].notna()]
    overall = float(timed["active_seconds"].median()) if len(timed) else np.nan
    grouped = timed.groupby("rater_id")["active_seconds"]
    out = pd.DataFrame({
        "n_timed": grouped.size(),
        "median_seconds": grouped.median(),
        "fast_share": grouped.apply(lambda s: float((s < speeder_ratio * overall).mean())),
    }).reindex(_raters(df))
    out["n_timed"] = out["n_timed"].fillna(0).astype(int)
    out["speed_ratio"] = out["median_seconds"] / overall if overall > 0 else np.nan
    return out[["n_timed", "median_seconds", "speed_ratio", "fast_share"]]


def length_bias(judgments: pd.DataFrame) -> pd.DataFrame:
    """n_length, longer_share, others_longer_share, length_p.

    Over non-tie judgments of pairs whose responses differ in length: the share where the rater preferred
    the longer one, and the median of the other raters' shares (a median, so that one extreme rater does
    not move the yardstick for everyone); length_p is a two-sided binomial test of the rater's count against
    that median, Holm-adjusted across raters. Everyone likes longer answers when they are better; a bias is
    liking them more (or less) than colleagues do.
    """
    df = validate_judgments(judgments)
    usable = df[(df["choice"] != 0) & df["len_a"].notna() & df["len_b"].notna() & (df["len_a"] != df["len_b"])]
    longer = (usable["choice"] > 0).to_numpy() == (usable["len_a"] > usable["len_b"]).to_numpy()
    out = _by_rater(usable, {"n_length": np.ones(len(usable)), "longer": longer}).reindex(_raters(df), fill_value=0)
    out["longer_share"] = out["longer"] / out["n_length"].where(out["n_length"] > 0)
    shares = out["longer_share"]
    out["others_longer_share"] = [shares.drop(r).median() for r in out.index]  # NaN when nobody else has any
    raw = [stats.binomtest(int(k), int(n), p0).pvalue if n > 0 and 0 < p0 < 1 else np.nan
           for k, n, p0 in zip(out["longer"], out["n_length"], out["others_longer_share"])]
    out["length_p"] = holm(pd.Series(raw, index=out.index))
    return out[["n_length", "longer_share", "others_longer_share", "length_p"]].astype({"n_length": int})


def contradicts(choice: int, criteria: dict | None) -> bool:
    """Whether per-criterion choices point against the overall one: the overall choice picks a side, no
    criterion favours that side, and at least one favours the other."""
    if not criteria or choice == 0:
        return False
    scores = [np.sign(v) for v in criteria.values() if isinstance(v, (int, float)) and not isinstance(v, bool)
              and np.isfinite(v)]
    side = np.sign(choice)
    return bool(scores) and side not in scores and -side in scores


def criteria_contradictions(judgments: pd.DataFrame) -> pd.DataFrame:
    """n_criteria (judgments with per-criterion choices), contradiction_rate (see `contradicts`)."""
    df = validate_judgments(judgments)
    has = df["criteria"].map(lambda c: isinstance(c, dict) and len(c) > 0).to_numpy(dtype=bool)
    bad = [contradicts(int(c), k) for c, k in zip(df["choice"], df["criteria"])]
    out = _by_rater(df, {"n_criteria": has, "bad": bad}).reindex(_raters(df), fill_value=0)
    out["contradiction_rate"] = out["bad"] / out["n_criteria"].where(out["n_criteria"] > 0)
    return out[["n_criteria", "contradiction_rate"]].astype({"n_criteria": int})


def rater_table(judgments: pd.DataFrame, config: QualityConfig | None = None) -> pd.DataFrame:
    """Every statistic above for every rater in one DataFrame, plus `reliability` (Dawid-Skene, see
    collect.aggregate) and `flags`: a comma-separated list of the checks the rater fails, "" when none.

    Flags: gold, consensus, position, inconsistent, speeder, length, criteria, unreliable (see QualityConfig).
    """
    config = config or QualityConfig()
    df = validate_judgments(judgments)
    # A repeated pair is one item: statistics of what the rater decides read their first judgment of it;
    # those of how they work (sides, speed, criteria) read every judgment.
    first = _first_judgments(df)
    fit = dawid_skene(first)
    parts = [
        df.groupby("rater_id").size().rename("n_judgments").to_frame(),
        gold_accuracy(first, config.min_gold_accuracy),
        consensus_agreement(first),
        position_bias(df),
        swap_consistency(df),
        speed(df, config.speeder_ratio),
        length_bias(first),
        criteria_contradictions(df),
        fit.raters.set_index("rater_id")[["reliability"]],
    ]
    table = pd.concat(parts, axis=1)
    c = config
    checks = {
        "gold": (table["n_gold"] >= c.min_gold) & (table["gold_accuracy"] < c.min_gold_accuracy)
        & (table["gold_p"] < c.gold_alpha),
        "consensus": (table["n_consensus"] >= c.min_consensus_n) & (table["consensus_agreement"] < c.min_consensus),
        "position": (table["n_sided"] >= c.min_sided) & (table["position_p"] < c.alpha)
        & ((table["left_share"] - 0.5).abs() >= c.min_position_effect),
        "inconsistent": (table["n_repeats"] >= c.min_repeats) & (table["consistency"] < c.min_consistency),
        "speeder": (table["n_timed"] >= c.min_timed) & (table["speed_ratio"] < c.speeder_ratio),
        "length": (table["n_length"] >= c.min_length_n) & (table["length_p"] < c.alpha)
        & ((table["longer_share"] - table["others_longer_share"]).abs() >= c.min_length_effect),
        "criteria": (table["n_criteria"] >= c.min_criteria) & (table["contradiction_rate"] > c.max_contradiction_rate),
        "unreliable": (table["n_judgments"] >= c.min_reliability_n) & (table["reliability"] < c.min_reliability),
    }
    flags = pd.DataFrame({name: mask.fillna(False).astype(bool) for name, mask in checks.items()})
    table["flags"] = flags.apply(lambda row: ",".join(name for name in flags.columns if row[name]), axis=1)
    return table.reset_index()


def config_table(config: QualityConfig | None = None) -> pd.DataFrame:
    """The thresholds in use, as a two-column table for the dashboard."""
    return pd.DataFrame(list(asdict(config or QualityConfig()).items()), columns=["setting", "value"])

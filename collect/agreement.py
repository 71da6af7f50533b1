"""Inter-rater agreement: Cohen's kappa per rater pair, Fleiss' kappa, Krippendorff's alpha; bootstrap CIs.

Three plain statistics over arrays (`cohen_kappa`, `fleiss_kappa`, `krippendorff_alpha`) and three that read a
judgments frame (see collect.aggregate.JUDGMENT_COLUMNS) and add a percentile bootstrap confidence interval by
resampling pairs (`pairwise_cohen`, `fleiss`, `krippendorff`); `agreement_summary` puts them in one table
(`agreement_tables`: with the per-rater-pair table too).

Scales: "direction" collapses the five buttons to A better / tie / B better, the usual basis for the nominal
kappas; "choice" keeps all five (-2..2), the basis for Krippendorff's ordinal alpha. A rater who judged a
pair twice counts once (their first judgment).

Each bootstrap replicate draws the pairs with replacement. Every statistic here is a function of per-pair
tallies, so a replicate is a weighted sum of those tallies: all replicates are computed at once with a matrix
product instead of a Python loop.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from collect.aggregate import direction, validate_judgments
# Defined in the light collect.defaults for the CLI's start-up; collect.agreement.N_BOOTSTRAP stays its public name.
from collect.defaults import N_BOOTSTRAP
from collect.errors import UserError

Scale = Literal["direction", "choice"]
SCALE_VALUES = {"direction": np.array([-1, 0, 1]), "choice": np.array([-2, -1, 0, 1, 2])}


@dataclass
class Agreement:
    """One agreement statistic with its bootstrap interval.

    statistic: "cohen_kappa", "fleiss_kappa" or "krippendorff_alpha".
    scale: "direction" (3 values) or "choice" (5 values); level: "nominal", "ordinal", "interval" or "linear"/
        "quadratic" for weighted kappa.
    estimate: on all the data; ci_low, ci_high: percentile bootstrap interval at `confidence` (NaN when the
        statistic is undefined on too many replicates, e.g. one value everywhere).
    n_items: pairs that entered (judged by at least two of the raters concerned); n_raters: raters involved.
    """

    statistic: str
    scale: str
    level: str
    estimate: float
    ci_low: float
    ci_high: float
    n_items: int
    n_raters: int
    confidence: float = 0.95
    n_bootstrap: int = 0


# ------------------------------------------------------------------------------ statistics over tallies


def _kappa_from_tables(tables: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa of contingency tables (..., K, K) with disagreement weights (K, K)."""
    total = tables.sum(axis=(-2, -1), keepdims=True)
    p = tables / np.where(total > 0, total, 1)
    expected = p.sum(axis=-1)[..., :, None] * p.sum(axis=-2)[..., None, :]
    observed_d = (p * weights).sum(axis=(-2, -1))
    expected_d = (expected * weights).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected_d > 0, 1.0 - observed_d / expected_d, np.nan)


def _kappa_weights(k: int, weights: str | None) -> np.ndarray:
    i = np.arange(k)
    d = np.abs(i[:, None] - i[None, :]).astype(float)
    if weights is None:
        return (d > 0).astype(float)
    if weights == "linear":
        return d
    if weights == "quadratic":
        return d**2
    raise UserError(f"unknown kappa weights {weights!r}: expected None, 'linear' or 'quadratic'")


def cohen_kappa(
    x: Sequence, y: Sequence, categories: Sequence | None = None, weights: str | None = None
) -> float:
    """Cohen's kappa between two raters' labels of the same items (x[i] and y[i] label item i).

    categories: the ordered label set (default: the sorted labels seen); weights: None (plain kappa),
    "linear" or "quadratic" (weighted kappa for ordered labels).
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 1:
        raise UserError("cohen_kappa: x and y must be 1-d and of the same length")
    cats = np.asarray(sorted(set(x.tolist()) | set(y.tolist())) if categories is None else categories)
    table = np.zeros((len(cats), len(cats)))
    np.add.at(table, (np.searchsorted(cats, x), np.searchsorted(cats, y)), 1.0)
    return float(_kappa_from_tables(table, _kappa_weights(len(cats), weights)))


def _fleiss_from_counts(counts: np.ndarray, item_weights: np.ndarray) -> np.ndarray:
    """Fleiss' kappa of an items x categories count table, for rows of item weights (B, n_items).

    Items may have different numbers of ratings (>= 2): each item's observed agreement is the share of
    agreeing rating pairs within it, and the category shares pool all ratings (Fleiss 1971 with n_i
    varying); with the same number everywhere this is Fleiss' formula exactly.
    """
    n_i = counts.sum(axis=1)
    agree_i = (counts * (counts - 1)).sum(axis=1) / (n_i * (n_i - 1))
    w = np.atleast_2d(item_weights)
    p_bar = (w @ agree_i) / w.sum(axis=1)
    shares = (w @ counts) / (w @ n_i)[:, None]
    p_e = (shares**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p_e < 1, (p_bar - p_e) / (1 - p_e), np.nan)


def fleiss_kappa(counts: np.ndarray | Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of a table: counts[i, c] = how many raters put item i in category c (>= 2 per item)."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or (counts.sum(axis=1) < 2).any():
        raise UserError("fleiss_kappa: expected an items x categories table with at least 2 ratings per item")
    return float(_fleiss_from_counts(counts, np.ones(len(counts)))[0])


def _coincidences(unit_counts: np.ndarray) -> np.ndarray:
    """Per-unit coincidence matrices (n_units, K, K) from value counts per unit (units with >= 2 values)."""
    m = unit_counts.sum(axis=1)
    pairs = unit_counts[:, :, None] * unit_counts[:, None, :]
    idx = np.arange(unit_counts.shape[1])
    pairs[:, idx, idx] -= unit_counts
    return pairs / (m - 1)[:, None, None]


def _alpha_from_coincidences(o: np.ndarray, values: np.ndarray, level: str) -> np.ndarray:
    """Krippendorff's alpha of coincidence matrices (B, K, K) for ordered `values`."""
    n_c = o.sum(axis=2)  # (B, K)
    n = n_c.sum(axis=1)
    k = len(values)
    if level == "nominal":
        delta = np.broadcast_to(1.0 - np.eye(k), o.shape)
    elif level == "interval":
        delta = np.broadcast_to((values[:, None] - values[None, :]).astype(float) ** 2, o.shape)
    elif level == "ordinal":
        # delta(c, k) = (sum of n_g for g from c to k, minus half of n_c and n_k)^2
        cum = np.concatenate([np.zeros((len(n_c), 1)), np.cumsum(n_c, axis=1)], axis=1)  # cum[:, i] = sum n_<i
        lo = np.minimum(np.arange(k)[:, None], np.arange(k)[None, :])
        hi = np.maximum(np.arange(k)[:, None], np.arange(k)[None, :])
        between = cum[:, hi + 1] - cum[:, lo]
        delta = (between - (n_c[:, :, None] + n_c[:, None, :]) / 2.0) ** 2
    else:
        raise UserError(f"unknown alpha level {level!r}: expected 'nominal', 'ordinal' or 'interval'")
    observed = (o * delta).sum(axis=(1, 2))
    expected = (n_c[:, :, None] * n_c[:, None, :] * delta).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected > 0, 1.0 - (n - 1) * observed / expected, np.nan)


def krippendorff_alpha(
    reliability_data: np.ndarray | Sequence[Sequence[float]],
    level: Literal["nominal", "ordinal", "interval"] = "ordinal",
    values: Sequence[float] | None = None,
) -> float:
    """Krippendorff's alpha of a raters x units matrix (NaN where a rater did not rate a unit).

    Units with fewer than two values are not pairable and drop out, as in Krippendorff (2011).
    values: the ordered value set (default: the values seen).
    """
    data = np.asarray(reliability_data, dtype=float)
    if data.ndim != 2:
        raise UserError("krippendorff_alpha: expected a raters x units matrix")
    vals = np.asarray(sorted(set(data[~np.isnan(data)].tolist())) if values is None else values, dtype=float)
    counts = np.stack([(data == v).sum(axis=0) for v in vals], axis=1).astype(float)  # units x K
    counts = counts[counts.sum(axis=1) >= 2]
    if len(counts) == 0:
        return float("nan")
    return float(_alpha_from_coincidences(_coincidences(counts).sum(axis=0)[None], vals, level)[0])


# ------------------------------------------------------------------------------------ over judgments


def _bootstrap_weights(n_items: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """How often each item is drawn in each replicate: (n_bootstrap, n_items) multinomial counts."""
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_bootstrap).astype(float)


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    ok = replicates[np.isfinite(replicates)]
    # A statistic undefined on many replicates has no honest interval.
    if len(ok) < 0.9 * len(replicates) or len(ok) == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ok, [tail, 100 - tail])
    return float(low), float(high)


def _ratings(judgments: pd.DataFrame, scale: Scale) -> pd.DataFrame:
    """pair_id, rater_id, value: each rater's first judgment of each pair, on the chosen scale."""
    if scale not in SCALE_VALUES:
        raise UserError(f"unknown scale {scale!r}: expected 'direction' or 'choice'")
    df = validate_judgments(judgments)
    if df["submitted_at"].notna().any():
        df = df.sort_values("submitted_at", kind="stable")
    df = df.drop_duplicates(["pair_id", "rater_id"], keep="first")
    value = direction(df["choice"]) if scale == "direction" else df["choice"].to_numpy()
    return pd.DataFrame({"pair_id": df["pair_id"].to_numpy(), "rater_id": df["rater_id"].to_numpy(), "value": value})


def _unit_counts(ratings: pd.DataFrame, scale: Scale) -> tuple[np.ndarray, int]:
    """Value counts per pair (pairs with at least two ratings) and the number of raters involved."""
    values = SCALE_VALUES[scale]
    codes, _ = pd.factorize(ratings["pair_id"])
    counts = np.zeros((codes.max() + 1 if len(codes) else 0, len(values)))
    np.add.at(counts, (codes, np.searchsorted(values, ratings["value"].to_numpy())), 1.0)
    keep = counts.sum(axis=1) >= 2
    raters = ratings.loc[keep[codes], "rater_id"].nunique() if len(codes) else 0
    return counts[keep], int(raters)


def fleiss(
    judgments: pd.DataFrame,
    scale: Scale = "direction",
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> Agreement:
    """Fleiss' kappa over all pairs judged at least twice (different raters per pair are fine)."""
    counts, n_raters = _unit_counts(_ratings(judgments, scale), scale)
    if len(counts) == 0:
        return Agreement("fleiss_kappa", scale, "nominal", np.nan, np.nan, np.nan, 0, n_raters, confidence, 0)
    estimate = float(_fleiss_from_counts(counts, np.ones(len(counts)))[0])
    rng = np.random.default_rng(seed)
    reps = np.concatenate([_fleiss_from_counts(counts, w) for w in _chunks(len(counts), n_bootstrap, rng)]
                          + [np.array([])])
    return Agreement("fleiss_kappa", scale, "nominal", estimate, *_interval(reps, confidence),
                     len(counts), n_raters, confidence, n_bootstrap)


def krippendorff(
    judgments: pd.DataFrame,
    level: Literal["nominal", "ordinal", "interval"] = "ordinal",
    scale: Scale = "choice",
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> Agreement:
    """Krippendorff's alpha, by default ordinal on the five-point scale, over pairs judged at least twice."""
    counts, n_raters = _unit_counts(_ratings(judgments, scale), scale)
    if len(counts) == 0:
        return Agreement("krippendorff_alpha", scale, level, np.nan, np.nan, np.nan, 0, n_raters, confidence, 0)
    values = SCALE_VALUES[scale].astype(float)
    per_unit = _coincidences(counts).reshape(len(counts), -1)
    k = len(values)
    estimate = float(_alpha_from_coincidences(per_unit.sum(axis=0).reshape(1, k, k), values, level)[0])
    rng = np.random.default_rng(seed)
    reps = np.concatenate([_alpha_from_coincidences((w @ per_unit).reshape(-1, k, k), values, level)
                           for w in _chunks(len(counts), n_bootstrap, rng)] + [np.array([])])
    return Agreement("krippendorff_alpha", scale, level, estimate, *_interval(reps, confidence),
                     len(counts), n_raters, confidence, n_bootstrap)


def _chunks(n_items: int, n_bootstrap: int, rng: np.random.Generator, max_cells: int = 5_000_000):
    """Bootstrap weights in blocks, so that many items times many replicates stays small in memory."""
    block = max(1, max_cells // max(n_items, 1))
    for start in range(0, n_bootstrap, block):
        yield _bootstrap_weights(n_items, min(block, n_bootstrap - start), rng)


def _cohen_all_pairs(
    judgments: pd.DataFrame, scale: Scale, weights: str | None, min_overlap: int, n_bootstrap: int, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per rater pair: rater_a, rater_b, n_items, kappa; and kappa replicates (rater pairs, n_bootstrap).

    All rater pairs share the same bootstrap draws of judged pairs, so their mean has an honest interval.
    """
    ratings = _ratings(judgments, scale)
    values = SCALE_VALUES[scale]
    k = len(values)
    disagreement = _kappa_weights(k, weights)
    wide = ratings.pivot(index="pair_id", columns="rater_id", values="value")
    raters = list(wide.columns)
    seen = wide.notna().to_numpy()
    overlap = seen.T.astype(int) @ seen.astype(int)
    coded = np.searchsorted(values, np.nan_to_num(wide.to_numpy(), nan=values[0]))
    rows, items, cells = [], [], []
    for i in range(len(raters)):
        for j in range(i + 1, len(raters)):
            if overlap[i, j] < min_overlap:
                continue
            both = np.flatnonzero(seen[:, i] & seen[:, j])
            one_hot = np.zeros((len(both), k * k))
            one_hot[np.arange(len(both)), coded[both, i] * k + coded[both, j]] = 1.0
            rows.append((raters[i], raters[j], len(both),
                         float(_kappa_from_tables(one_hot.sum(axis=0).reshape(k, k), disagreement))))
            items.append(both)
            cells.append(one_hot)
    table = pd.DataFrame(rows, columns=["rater_a", "rater_b", "n_items", "kappa"])
    reps = np.full((len(rows), n_bootstrap), np.nan)
    if rows and n_bootstrap:
        rng = np.random.default_rng(seed)
        done = 0
        for w in _chunks(len(wide), n_bootstrap, rng):
            for r, (both, one_hot) in enumerate(zip(items, cells)):
                tables = (w[:, both] @ one_hot).reshape(-1, k, k)
                reps[r, done:done + len(w)] = _kappa_from_tables(tables, disagreement)
            done += len(w)
    return table, reps


def pairwise_cohen(
    judgments: pd.DataFrame,
    scale: Scale = "direction",
    weights: str | None = None,
    min_overlap: int = 10,
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Cohen's kappa for every pair of raters who judged at least `min_overlap` pairs in common.

    Returns a DataFrame: rater_a, rater_b, n_items, kappa, ci_low, ci_high (sorted by rater ids).
    weights: None, "linear" or "quadratic" (weighted kappa; meaningful on the "choice" scale).
    """
    table, reps = _cohen_all_pairs(judgments, scale, weights, min_overlap, n_bootstrap, seed)
    return _pairwise_intervals(table, reps, n_bootstrap, confidence)


def _pairwise_intervals(table: pd.DataFrame, reps: np.ndarray, n_bootstrap: int, confidence: float) -> pd.DataFrame:
    bounds = [_interval(r, confidence) if n_bootstrap else (np.nan, np.nan) for r in reps]
    table["ci_low"] = [b[0] for b in bounds]
    table["ci_high"] = [b[1] for b in bounds]
    return table


def mean_cohen(
    judgments: pd.DataFrame,
    scale: Scale = "direction",
    weights: str | None = None,
    min_overlap: int = 10,
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> Agreement:
    """The mean of the pairwise Cohen's kappas (Light's kappa), with a bootstrap of judged pairs."""
    table, reps = _cohen_all_pairs(judgments, scale, weights, min_overlap, n_bootstrap, seed)
    return _mean_of_pairs(table, reps, scale, weights or "nominal", n_bootstrap, confidence)


def _mean_of_pairs(
    table: pd.DataFrame, reps: np.ndarray, scale: Scale, level: str, n_bootstrap: int, confidence: float
) -> Agreement:
    """Light's kappa from `_cohen_all_pairs`: the mean's interval needs every replicate, not the pairs' intervals."""
    if table.empty:
        return Agreement("mean_cohen_kappa", scale, level, np.nan, np.nan, np.nan, 0, 0, confidence, 0)
    with warnings.catch_warnings():  # an all-NaN replicate (no rater pair defined) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_reps = np.nanmean(reps, axis=0) if n_bootstrap else np.array([])
    n_raters = pd.concat([table["rater_a"], table["rater_b"]]).nunique()
    return Agreement("mean_cohen_kappa", scale, level, float(table["kappa"].mean()),
                     *_interval(mean_reps, confidence), int(table["n_items"].sum()), int(n_raters),
                     confidence, n_bootstrap)


def agreement_summary(
    judgments: pd.DataFrame, n_bootstrap: int = N_BOOTSTRAP, min_overlap: int = 10, seed: int = 0
) -> pd.DataFrame:
    """The headline numbers in one table, one row per statistic (the fields of `Agreement`).

    Fleiss' kappa on directions, Krippendorff's alpha ordinal on the five-point scale, and the mean of the
    pairwise Cohen's kappas on directions over rater pairs with at least `min_overlap` pairs in common.
    For the per-rater-pair table as well, call `agreement_tables`: it bootstraps the Cohen's kappas once.
    """
    return agreement_tables(judgments, n_bootstrap, min_overlap, seed)[0]


def agreement_tables(
    judgments: pd.DataFrame, n_bootstrap: int = N_BOOTSTRAP, min_overlap: int = 10, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`agreement_summary` and `pairwise_cohen` (on directions) from one bootstrap of the Cohen's kappas.

    The same numbers as the two calls with the same arguments; the kappas' bootstrap, the costly part, runs once.
    """
    table, reps = _cohen_all_pairs(judgments, "direction", None, min_overlap, n_bootstrap, seed)
    rows = [
        fleiss(judgments, "direction", n_bootstrap=n_bootstrap, seed=seed),
        krippendorff(judgments, "ordinal", "choice", n_bootstrap=n_bootstrap, seed=seed),
        _mean_of_pairs(table, reps, "direction", "nominal", n_bootstrap, 0.95),
    ]
    return pd.DataFrame([r.__dict__ for r in rows]), _pairwise_intervals(table, reps, n_bootstrap, 0.95)

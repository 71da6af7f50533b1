"""How good is a reward model on a preference dataset?

    report = evaluate_reward_model("runs/rm", "heldout.parquet", out="runs/rm/eval")

- accuracy (reward of chosen > reward of rejected) with an expanded percentile-bootstrap interval that resamples
  whole prompts (pairs on one prompt are not independent); the Wilson score interval, over prompts, where the
  bootstrap has too little to resample (fewer than 10 pairs or prompts, or every prompt as often right: every
  pair right or every pair wrong, say);
- the same by `source` and by every category column (a few distinct values; `category_columns`);
- calibration: P(chosen preferred) = sigmoid(r_chosen - r_rejected); the model's confidence in its
  own pick, max(p, 1 - p), is binned on [0.5, 1] and compared with how often the pick was right;
  the expected calibration error (ECE) is the count-weighted gap, drawn as a reliability plot, beside the
  ECE a perfectly calibrated model would show on as many pairs (ECE is biased upward on few pairs);
- length bias: accuracy when the chosen response is the longer one versus the shorter one (in
  characters), and how often the model prefers the longer response;
- agreement with the raters' strength: Pearson and Spearman correlation of r_chosen - r_rejected
  with the `margin` column.

`preference_metrics` computes all of it from rewards alone, so it can be checked by hand.

    comparison = compare_reward_models("runs/rm-new", "runs/rm-old", "heldout.parquet")

Is one reward model better than another on the same pairs? `paired_comparison` gives each one's accuracy, the
difference with a bootstrap interval over prompts, and an exact permutation test over prompts (`sign_flip_p_value`,
which the step choice in training uses too): two models scored on the same pairs are compared pair by pair, which
separates them on far fewer pairs than two independent intervals would.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from collect.errors import UserError, check_seed, warn

# Columns that identify or carry text, never categories.
_NOT_CATEGORIES = {"prompt", "chosen", "rejected", "pair_id", "prompt_id", "id", "margin", "messages"}
MAX_CATEGORY_VALUES = 50


# A 95% percentile interval reads the 2.5th and 97.5th percentiles of the resamples: from fewer than 100 those are
# one or two draws, and from one resample an "interval" that need not hold the estimate at all. (The expanded interval
# reads further out for few prompts, 0.9% at 10: there the bootstrap draws more resamples than asked, 5 beyond each
# end.)
MIN_BOOTSTRAP_RESAMPLES = 100
CI_LEVEL = 0.95
"""The level of every interval the evaluation reports (`ci_level` in eval.json)."""


def check_resamples(n_bootstrap: int) -> None:
    if n_bootstrap < MIN_BOOTSTRAP_RESAMPLES:
        raise UserError(f"n_bootstrap (--n-bootstrap) {n_bootstrap}: at least {MIN_BOOTSTRAP_RESAMPLES} resamples, "
                        "or the 95% interval is read off a draw or two")


def _per_cluster(values: np.ndarray, clusters: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """(sum of `values`, count) per cluster, the clusters in the sorted order of their labels as strings (each
    item its own cluster without `clusters`). Strings, whatever the labels' type: the resampling stream follows
    this order, and prompt numbers passed as ints (`prefloop reward compare`, training's summary) must draw what
    the same numbers passed as strings (`reward eval`, before) drew: 10 sorts after 2 as an int, before it as a
    string."""
    keys = clusters if clusters is not None else range(len(values))
    _, label = np.unique(np.asarray([str(key) for key in keys]), return_inverse=True)
    return np.bincount(label, weights=values), np.bincount(label).astype(np.float64)


def bootstrap_interval(correct: np.ndarray, n_bootstrap: int = 1000, seed: int = 0,
                       clusters: Sequence[Any] | None = None, expanded: bool = True) -> tuple[float, float]:
    """Expanded percentile-bootstrap interval of the mean of a per-pair array (0/1 outcomes, or the -1/0/1
    differences of two models' outcomes). With `clusters` (a label per item: the prompt of each pair) whole
    clusters are resampled: pairs on one prompt are not independent evidence, and resampling them one by one gives
    too narrow an interval (20% too narrow at a within-prompt correlation of 0.3 on summarize's test pairs, up to
    10 a post).

    Expanded (Hesterberg, "What teachers should know about the bootstrap", The American Statistician 69(4), 2015):
    the percentiles read are those at which a normal interval would be as wide as Student's t interval with the
    sample's variance divided by n - 1, for n resampled units. A plain percentile interval is too narrow for few
    units: in simulations of prompts with 1-3 pairs each (bench/interval_coverage.py) it held the true accuracy of
    20 prompts in 92.4% of test sets, and the difference of two models on 40 prompts in 92.9%; expanded, 94.7% and
    93.8%. From a hundred units on, the two differ by under 2% of their width. `expanded=False`: the plain percentile
    interval (Chatbot Arena's), for comparison."""
    check_resamples(n_bootstrap)
    correct = np.asarray(correct, dtype=np.float64)
    if len(correct) == 0:
        return (float("nan"), float("nan"))
    right, size = _per_cluster(correct, clusters)
    if expanded:  # enough resamples for 5 beyond each end (up to 100,000: 3 units' ends are 7e-8 out)
        n_bootstrap = max(n_bootstrap, min(math.ceil(5 / expanded_tail(len(right))), 100_000))
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap)
    chunk = max(1, 2_000_000 // len(right))  # bound memory for large sets
    for start in range(0, n_bootstrap, chunk):
        stop = min(n_bootstrap, start + chunk)
        idx = rng.integers(0, len(right), size=(stop - start, len(right)))
        means[start:stop] = right[idx].sum(axis=1) / size[idx].sum(axis=1)
    tail = expanded_tail(len(right)) if expanded else (1 - CI_LEVEL) / 2
    lo, hi = np.percentile(means, [100 * tail, 100 * (1 - tail)])
    return (float(lo), float(hi))


def expanded_tail(units: int) -> float:
    """The share of resamples beyond each end of the expanded percentile interval of `units` resampled units:
    Phi(-sqrt(n / (n - 1)) * t_{n-1}(1 - (1 - CI_LEVEL) / 2)), 0.00855 for 10 units at 95% (R's resample package,
    ExpandProbs), 0.0248 for 1,000; (1 - CI_LEVEL) / 2 for one unit, where there is no spread to widen."""
    from scipy import stats

    if units < 2:
        return (1 - CI_LEVEL) / 2
    return float(stats.norm.sf(np.sqrt(units / (units - 1)) * stats.t.ppf(1 - (1 - CI_LEVEL) / 2, units - 1)))


def sign_flip_p_value(differences: Sequence[int]) -> float:
    """P(sum of +-|d| over `differences` >= sum of `differences`), each sign + or - at even odds, exactly: the
    one-sided p-value of a permutation test where each prompt's difference (pairs one model gets right less pairs
    the other does) is as likely negative as positive if neither model is better. With differences of +-1 (one pair
    a prompt) it is the exact McNemar test. Prompts whose differences have the same size add up as a binomial (k of
    n signs +: size * (2k - n)), so the null distribution is the convolution of one binomial per distinct size, on
    a grid of integer totals."""
    from scipy.stats import binom

    sizes: dict[int, int] = {}
    for d in differences:
        if d:
            sizes[abs(int(d))] = sizes.get(abs(int(d)), 0) + 1
    null = np.ones(1)  # null[i]: the probability that the total is i - offset
    offset = 0
    for size, count in sizes.items():
        spread = np.zeros(2 * size * count + 1)
        spread[::2 * size] = binom.pmf(np.arange(count + 1), count, 0.5)
        null = np.convolve(null, spread)
        offset += size * count
    return min(1.0, float(null[int(sum(differences)) + offset:].sum()))  # rounding can take a sum past 1


def prompt_differences(first: Sequence[bool], second: Sequence[bool], prompts: Sequence[Any] | None = None) -> list[int]:
    """Per prompt (`prompts`: one label per pair; None: each pair its own), how many more of its pairs `first`
    gets right than `second`, in order of each prompt's first pair."""
    if len(first) != len(second):
        raise ValueError(f"the evaluations scored {len(first)} and {len(second)} pairs; they must be the same pairs")
    if prompts is not None and len(prompts) != len(first):
        raise ValueError(f"{len(prompts)} prompts named for {len(first)} pairs; name one per pair")
    difference: dict[Any, int] = {}
    for pair, (a, b) in enumerate(zip(first, second)):
        prompt = prompts[pair] if prompts is not None else pair
        difference[prompt] = difference.get(prompt, 0) + int(a) - int(b)
    return list(difference.values())


def paired_comparison(first_correct: Sequence[bool], second_correct: Sequence[bool],
                      prompts: Sequence[Any] | None = None, n_bootstrap: int = 1000, seed: int = 0,
                      names: tuple[str, str] = ("first", "second")) -> dict[str, Any]:
    """Two models' outcomes on the same pairs (True: chosen ranked above rejected), compared: each one's accuracy
    entry (under its name in `names`), `difference` (first minus second) with a bootstrap interval that resamples whole prompts, the pairs only
    one of them gets right, and `p_value`, two-sided, of the exact permutation test over prompts
    (`sign_flip_p_value`). The interval needs at least MIN_BOOTSTRAP_UNITS prompts on which the two differ: with
    fewer, a percentile bootstrap cannot draw a resample without them often enough (with 4 such prompts, all one
    way, among 100, it gives [+0.01, +0.08] where the exact test gives p = 0.125), so there is none, and p decides;
    nor where every prompt's pairs differ alike (every pair the same way, say: each resample then has the same
    difference). `ci_missing` says why."""
    first, second = np.asarray(first_correct, dtype=bool), np.asarray(second_correct, dtype=bool)
    differences = prompt_differences(first.tolist(), second.tolist(), prompts)
    one_sided = min(sign_flip_p_value(differences), sign_flip_p_value([-d for d in differences]))
    units = len(differences)
    pair_differences = first.astype(float) - second.astype(float)
    interval, method, missing = [None, None], None, None
    if sum(d != 0 for d in differences) < MIN_BOOTSTRAP_UNITS:
        missing = f"under {MIN_BOOTSTRAP_UNITS} prompts tell them apart"
    elif _constant(np.divide(*_per_cluster(pair_differences, prompts))):
        missing = ("every pair goes the same way" if pair_differences.min() == pair_differences.max()
                   else "every prompt's pairs differ alike")
    else:
        interval = list(bootstrap_interval(pair_differences, n_bootstrap, seed=seed, clusters=prompts))
        method = "bootstrap over prompts" if units < len(first) else "bootstrap"
    return {
        "n": int(len(first)),
        "prompts": units,
        names[0]: accuracy_entry(first.astype(float), n_bootstrap, seed, prompts),
        names[1]: accuracy_entry(second.astype(float), n_bootstrap, seed, prompts),
        "difference": float(first.mean() - second.mean()) if len(first) else None,
        "ci": interval,
        "ci_method": method,
        "ci_missing": missing,
        f"only_{names[0]}_right": int((first & ~second).sum()),
        f"only_{names[1]}_right": int((second & ~first).sum()),
        "p_value": min(1.0, 2 * one_sided),
    }


def wilson_interval(successes: float, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion: never zero-width, sound for a handful of items or all of one kind.
    `successes` may be fractional: the share seen times an effective number of items (`accuracy_entry`)."""
    from scipy import stats

    z = stats.norm.ppf(1 - (1 - CI_LEVEL) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # The interval holds p exactly; rounding put the upper end of 13 of 13 at 0.9999999999999999.
    return (float(min(p, max(0.0, centre - half))), float(max(p, min(1.0, centre + half))))


# Below this many pairs (or prompts), or with every prompt as often right (every pair right, say), the bootstrap
# has too little to resample: its interval is zero-width or covers far less than 95% (65% at 10 pairs and accuracy
# 0.9).
MIN_BOOTSTRAP_UNITS = 10


def accuracy_entry(correct: np.ndarray, n_bootstrap: int, seed: int,
                   clusters: Sequence[Any] | None = None) -> dict[str, Any]:
    """{n, accuracy, ci, ci_method} of per-pair outcomes (1 right, 0 wrong): a bootstrap over `clusters` (each
    pair's prompt) or over pairs, or the Wilson interval where the bootstrap has too little to resample. Wilson
    counts prompts, not pairs: 25 pairs on one prompt are not 25 independent outcomes (counted as pairs, 8 prompts
    of 25 pairs covered the true accuracy 65% of the time, not 95%)."""
    if not len(correct):  # an empty slice (no pair where chosen is shorter, say) has no accuracy: null, not NaN
        return {"n": 0, "accuracy": None, "ci": [None, None], "ci_method": None}
    right, size = _per_cluster(np.asarray(correct, dtype=np.float64), clusters)
    units = len(size)
    # Every prompt with the same share right (every pair right, or 20 prompts of one right and one wrong): each
    # resample has that share, and the bootstrap's interval has no width.
    if units < MIN_BOOTSTRAP_UNITS or _constant(right / size):
        lo, hi = wilson_interval(float(np.mean(correct)) * units, units)
        method = "wilson over prompts" if units < len(correct) else "wilson"
    else:
        lo, hi = bootstrap_interval(correct, n_bootstrap, seed=seed, clusters=clusters)
        method = "bootstrap over prompts" if units < len(correct) else "bootstrap"
    return {"n": int(len(correct)), "accuracy": float(np.mean(correct)), "ci": [lo, hi], "ci_method": method}


def _strict_json(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: JSON has no NaN, and strict readers reject it."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, which: np.ndarray, n_bins: int) -> float:
    counts = np.bincount(which, minlength=n_bins)
    gaps = np.abs(np.bincount(which, weights=correct, minlength=n_bins)
                  - np.bincount(which, weights=confidence, minlength=n_bins))
    return float(gaps.sum() / counts.sum())  # sum over bins of n_b / N * |accuracy_b - confidence_b|


def calibration(diff: np.ndarray, n_bins: int = 10, n_draws: int = 500, seed: int = 0) -> dict[str, Any]:
    """Reliability of the model's pick: confidence max(p, 1-p) with p = sigmoid(diff), binned on [0.5, 1].

    ECE is biased upward on few pairs: a perfectly calibrated model shows about 0.1 on 88 pairs. So beside it,
    `ece_if_calibrated` gives the mean and 95th percentile of the ECE of a model whose picks, with these same
    confidences, are right exactly as often as it claims (outcomes drawn `n_draws` times)."""
    diff = np.asarray(diff, dtype=np.float64)
    if not len(diff):
        return {"ece": None, "ece_if_calibrated": None, "n_bins": n_bins, "bins": [], "mean_p_chosen": None}
    p = 1 / (1 + np.exp(-np.clip(diff, -500, 500)))
    confidence = np.maximum(p, 1 - p)
    # A tie claims 50/50 and is counted half right, here and in the calibrated reference below: counted wrong, 40
    # ties alone gave an ECE of 0.5 to a model that claims nothing; drawn right or wrong in the reference only, they
    # added noise the model's own ECE has not, and made a calibrated model look better than calibrated.
    tie = diff == 0
    correct = np.where(diff > 0, 1.0, np.where(tie, 0.5, 0.0))
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    # Right-closed last bin so confidence 1.0 lands inside.
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n,
                     "confidence": float(confidence[mask].mean()) if n else None,
                     "accuracy": float(correct[mask].mean()) if n else None})
    rng = np.random.default_rng(seed)
    calibrated = [_expected_calibration_error(confidence, np.where(tie, 0.5, rng.random(len(diff)) < confidence),
                                              which, n_bins) for _ in range(n_draws)]
    return {"ece": _expected_calibration_error(confidence, correct, which, n_bins),
            "ece_if_calibrated": {"mean": float(np.mean(calibrated)), "p95": float(np.percentile(calibrated, 95))},
            "n_bins": n_bins, "bins": bins, "mean_p_chosen": float(p.mean())}


def _constant(values: np.ndarray) -> bool:
    """Every value the same, up to float rounding: np.std of 222 margins of 0.1 is 1e-17, not 0, and a reward
    gap computed as a difference varies in its last bits; a correlation with either is noise, or NaN."""
    return float(np.ptp(values)) <= 1e-9 * max(1.0, float(np.abs(values).max()))


def _correlations(x: np.ndarray, y: np.ndarray) -> dict[str, Any] | None:
    from scipy import stats

    if len(x) < 3 or _constant(y) or _constant(x):
        return None
    return {"n": int(len(x)), "pearson": float(stats.pearsonr(x, y)[0]),
            "spearman": float(stats.spearmanr(x, y)[0])}


def preference_metrics(
    reward_chosen: Sequence[float],
    reward_rejected: Sequence[float],
    *,
    groups: Mapping[str, Sequence[Any]] | None = None,
    margins: Sequence[float] | None = None,
    chosen_lengths: Sequence[int] | None = None,
    rejected_lengths: Sequence[int] | None = None,
    prompts: Sequence[Any] | None = None,
    n_bootstrap: int = 1000,
    n_bins: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """All evaluation metrics from rewards (and optional group labels, margins, response lengths, and each
    pair's prompt, which the intervals resample whole)."""
    rc = np.asarray(reward_chosen, dtype=np.float64)
    rr = np.asarray(reward_rejected, dtype=np.float64)
    diff = rc - rr
    correct = (diff > 0).astype(np.float64)
    clusters = np.asarray(prompts) if prompts is not None else None

    def entry(mask: np.ndarray | None = None) -> dict[str, Any]:
        if mask is None:
            return accuracy_entry(correct, n_bootstrap, seed, clusters)
        return accuracy_entry(correct[mask], n_bootstrap, seed, clusters[mask] if clusters is not None else None)

    report: dict[str, Any] = {"n": int(len(diff)), **entry()}
    # What reproduces every interval and draw below from the same rewards.
    report["ci_level"], report["n_bootstrap"], report["seed"] = CI_LEVEL, n_bootstrap, seed
    report["mean_reward_gap"] = float(diff.mean()) if len(diff) else None
    report["ties"] = int((diff == 0).sum())  # equal rewards: the model did not rank chosen above, so counted wrong
    report["by"] = {}
    for column, labels in (groups or {}).items():
        labels = np.asarray([str(v) for v in labels])
        report["by"][column] = {str(value): entry(labels == value) for value in sorted(set(labels.tolist()))}
    report["calibration"] = calibration(diff, n_bins, seed=seed)
    if chosen_lengths is not None and rejected_lengths is not None:
        lc, lr = np.asarray(chosen_lengths), np.asarray(rejected_lengths)
        longer, shorter = lc > lr, lc < lr
        # Both shares over the pairs of unequal length, so they compare: the raters' and the model's. The model
        # "prefers the longer one" when its pick agrees with the length ordering; a tie prefers neither and is left
        # out (counted as preferring the rejected side's length, ties from truncation, long pairs, read as a taste
        # for short answers).
        unequal = longer | shorter
        picks_longer = np.where(diff > 0, lc > lr, lr > lc)[unequal & (diff != 0)]
        report["length_bias"] = {
            "chosen_longer": entry(longer),
            "chosen_shorter": entry(shorter),
            "equal_length": int((~unequal).sum()),
            "share_chosen_longer": float(longer[unequal].mean()) if unequal.any() else None,
            "model_prefers_longer": float(picks_longer.mean()) if len(picks_longer) else None,
            "tied_unequal_length": int((unequal & (diff == 0)).sum()),
        }
    if margins is not None:
        margins = np.asarray(margins, dtype=np.float64)
        report["margin_correlation"] = _correlations(diff, margins)
        if report["margin_correlation"] is None:
            report["margin_correlation_missing"] = (
                "fewer than 3 pairs" if len(diff) < 3 else
                "every pair has the same margin" if _constant(margins) else "every pair has the same reward gap")
    return report


def category_columns(dataset) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({column: each row's label}, {column: why it is not broken down}) over every column that is not an id,
    text or the margin. A column is broken down by when its values are strings, whole numbers or true/false (a
    missing value labelled "(none)", an empty string "(empty)") with 2..50 distinct labels, at most half as many
    as rows; `source` whenever it has at most 50 (1,600 sources made a 1,600-row table and an accuracy plot
    86,000 pixels tall)."""
    used: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for name in dataset.column_names:
        if name in _NOT_CATEGORIES:
            continue
        values = dataset[name]
        if any(isinstance(v, (list, dict)) for v in values):
            skipped[name] = "holds lists or objects"
            continue
        if any(isinstance(v, float) and not v.is_integer() for v in values if v is not None):
            # prefloop export's confidence and agreement: each distinct value would be a category of a pair or two.
            skipped[name] = "fractional numbers (to break down by them, bin them into a column of labels)"
            continue
        labels = ["(none)" if v is None else "(empty)" if v == "" else str(v) for v in values]
        distinct = len(set(labels))
        most = MAX_CATEGORY_VALUES if name == "source" else min(MAX_CATEGORY_VALUES, max(2, len(values) // 2))
        if (name == "source" and distinct <= most) or 2 <= distinct <= most:
            used[name] = labels
        elif distinct < 2:
            skipped[name] = f"one value for every pair ({labels[0]})"
        else:
            rule = f"source is broken down up to {most}" if name == "source" else f"a category has 2 to {most}"
            skipped[name] = f"{distinct} distinct values in {len(values)} pairs ({rule})"
    return used, skipped


def _completion_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    return sum(len(m.get("content") or "") for m in value)


EVAL_FILES = ("eval.json", "reliability.png", "accuracy.png")
"""What `evaluate_reward_model` writes into its `out` folder."""


def evaluate_reward_model(
    model: Any,
    data: Any,
    out: str | Path | None = None,
    *,
    batch_size: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Score every pair of `data` with `model` (a directory, several, or a RewardScorer) and report
    the metrics; with `out`, also write eval.json, reliability.png and accuracy.png there. `max_length`
    overrides the length each model trained with, `batch_size` the 16 sequences a batch (RewardScorer; for a
    RewardScorer given, set both when it is made)."""
    from collect.errors import first_line
    from collect.output_dirs import check_can_create
    from reward.data import check_margins, prompt_of_rows

    check_resamples(n_bootstrap)
    check_seed(seed)
    if out is not None:  # checked before the model spends minutes scoring
        if Path(out).exists() and not Path(out).is_dir():
            raise UserError(f"out (--out) {out}: is a file; the evaluation writes a folder (eval.json and two "
                            "PNGs)")
        # Its three files would land among a model's (another model's folder named by mistake): only a new or
        # empty folder, or an earlier evaluation's, whose files are replaced.
        existing = list(Path(out).iterdir()) if Path(out).is_dir() else []
        others = sorted(p.name for p in existing if p.name not in EVAL_FILES)
        if others:
            raise UserError(f"out (--out) {out}: holds other files ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}); name a new or empty folder, or an earlier "
                            "evaluation's, whose files are replaced")
        check_can_create(Path(out), "out (--out)")
    rows, places = _read_pairs(data)
    # The margin only feeds the agreement figure: a bad one leaves that out, not the evaluation.
    bad_margin = None
    if "margin" in rows.column_names:
        try:
            check_margins(rows, places)
        except UserError as e:
            bad_margin = first_line(e)
    scorer = _scorer(model, batch_size, max_length)
    trained_on = _pairs_trained_on(scorer, rows, data)
    chosen, rejected = scorer.score_pairs(rows, places=places)
    groups, not_grouped = category_columns(rows)
    prompts = prompt_of_rows(rows)
    report = preference_metrics(
        chosen.mean,
        rejected.mean,
        groups=groups,
        margins=rows["margin"] if "margin" in rows.column_names and bad_margin is None else None,
        chosen_lengths=[_completion_chars(v) for v in rows["chosen"]],
        rejected_lengths=[_completion_chars(v) for v in rows["rejected"]],
        prompts=prompts,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    report["not_broken_down"] = not_grouped
    report["truncated"] = _truncated(scorer, chosen, rejected)
    if trained_on is not None:
        report["trained_on"] = trained_on
    comparisons, kept = distinct_comparisons(rows["chosen"], rows["rejected"], prompts)
    if comparisons < len(rows):
        # Several raters judged some comparisons (summarize-from-feedback: up to 10 each): per row, one such
        # comparison weighs as much as that many comparisons rated once. Here each counts once.
        correct = (chosen.mean > rejected.mean)[kept].astype(float)
        report["per_comparison"] = {"comparisons": comparisons, "rated_evenly": comparisons - len(kept),
                                    **accuracy_entry(correct, n_bootstrap, seed, [prompts[i] for i in kept])}
    if any(member.info.get("margin_in_loss") for member in scorer.members):
        # TRL's loss with a margin, -log sigmoid(gap - margin), pushes each gap past the raters' margin.
        report["calibration"]["note"] = ("trained with the raters' margin in the loss, which pushes reward gaps "
                                         "past it: sigmoid(gap) over-states confidence by design")
    if bad_margin is not None:
        report["margin_correlation"] = None
        report["margin_correlation_missing"] = bad_margin
    report["model"] = _model_names(scorer)
    report["data"] = _data_name(data)
    if len(scorer.members) > 1:
        report["ensemble_spread_mean"] = float(np.concatenate([chosen.spread, rejected.spread]).mean())
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        report_file, reliability_plot, accuracy_plot = (out / name for name in EVAL_FILES)
        report_file.write_text(json.dumps(_strict_json(report), indent=2, allow_nan=False) + "\n")
        plot_reliability(report, reliability_plot)
        plot_accuracy(report, accuracy_plot)
        report["files"] = [str(report_file), str(reliability_plot), str(accuracy_plot)]
    return report


def _pairs_trained_on(scorer, rows, data: Any) -> int | None:
    """How many of `rows` are pairs a member of `scorer` trained on (None where no member says what it trained
    on), with a warning when any are: accuracy on them measures memory, not generalisation."""
    from reward.data import data_label, pair_digests

    seen = scorer.training_pairs()
    if not seen:
        return None
    trained_on = sum(d in seen for d in pair_digests(rows))
    if trained_on:
        models = " + ".join(scorer.model_dirs)
        warn(f"{data_label('data', data)}: {trained_on} of its {len(rows)} pair(s) are pairs {models} "
             "trained on: accuracy on them measures memory, not generalisation")
    return trained_on


def distinct_comparisons(chosen: Sequence[Any], rejected: Sequence[Any], prompts: Sequence[Any]) -> tuple[int, list[int]]:
    """How many distinct comparisons (the same prompt and the same two responses, either way round) the rows hold,
    and, in row order, one row of each whose chosen response most of that comparison's raters chose (none for a
    comparison rated evenly both ways)."""
    votes: dict[tuple, dict[str, list[int]]] = {}
    for i, (good, bad, prompt) in enumerate(zip(chosen, rejected, prompts)):
        good, bad = json.dumps(good, sort_keys=True), json.dumps(bad, sort_keys=True)
        key = (json.dumps(prompt, sort_keys=True, default=str), min(good, bad), max(good, bad))
        votes.setdefault(key, {}).setdefault(good, []).append(i)
    kept = []
    for by_chosen in votes.values():
        most, *rest = sorted(by_chosen.values(), key=len, reverse=True)
        if not rest or len(rest[0]) < len(most):
            kept.append(most[0])
    return len(votes), sorted(kept)


def _read_pairs(data: Any):
    """(rows, places) of a preference dataset to evaluate on (a DatasetDict's `test` split), checked."""
    from reward.data import check_preferences, data_name, load_rows

    rows, places = load_rows(data, "data", split="test")
    check_preferences(rows, places, data_name(data), use_margin=False)
    return rows, places


def _data_name(data: Any) -> str:
    """A file or folder as its absolute path, as the models are named: the report may be read from elsewhere."""
    from reward.data import absolute_name

    if not isinstance(data, (str, Path)):
        return f"<{type(data).__name__}>"
    return absolute_name(data)


def compare_reward_models(
    model: Any,
    baseline: Any,
    data: Any,
    out: str | Path | None = None,
    *,
    batch_size: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Score every pair of `data` with `model` and with `baseline` (each a directory, several for an ensemble, or a
    RewardScorer) and compare them pair by pair (`paired_comparison`, `model` first: a positive difference means
    `model` ranks more pairs right). With `out`, also write the report there as JSON. `max_length` overrides the
    length each model trained with, `batch_size` the 16 sequences a batch (as in `evaluate_reward_model`)."""
    from collect.offline_models import resolve_model
    from collect.output_dirs import check_can_write_file
    from reward.data import prompt_of_rows
    from reward.score import RewardScorer

    # Checked before either model spends minutes scoring.
    check_resamples(n_bootstrap)
    check_seed(seed)
    if out is not None:  # an earlier comparison there is replaced; any other file is not (the data, a config.json)
        check_can_write_file(Path(out), "out (--out)")
        if Path(out).is_file() and not _is_comparison(Path(out)):
            raise UserError(f"out (--out) {out}: exists and is not an earlier comparison; name a new file, or an "
                            "earlier comparison's, which is replaced")
    for side, models in (("model", model), ("baseline", baseline)):
        if isinstance(models, RewardScorer):
            _check_loaded_scorer(batch_size, max_length)  # here, before the other side loads; `_scorer` repeats it
            continue
        if not _model_dirs(models):
            raise UserError(f"{side}: name at least one reward model")
        for path in _model_dirs(models):
            try:
                resolve_model(str(path))
            except UserError as e:
                raise UserError(f"{side}: {e}") from None
    if sorted(_model_names(model)) == sorted(_model_names(baseline)):  # a model against itself differs on nothing
        raise UserError(f"model and baseline (--model, --baseline) are the same: {', '.join(_model_names(model))}; "
                        "name another baseline")
    rows, places = _read_pairs(data)
    outcomes, truncated = [], {}
    for side, scorer in (("model", model), ("baseline", baseline)):
        scorer = _scorer(scorer, batch_size, max_length)
        _pairs_trained_on(scorer, rows, data)
        chosen, rejected = scorer.score_pairs(rows, places=places)
        outcomes.append(chosen.mean > rejected.mean)  # a tie counts wrong, as in evaluate_reward_model
        truncated[side] = _truncated(scorer, chosen, rejected)
        del scorer
    prompts = prompt_of_rows(rows)
    report = paired_comparison(*outcomes, prompts=prompts, n_bootstrap=n_bootstrap, seed=seed,
                               names=("model", "baseline"))
    comparisons, kept = distinct_comparisons(rows["chosen"], rows["rejected"], prompts)
    if comparisons < len(rows):  # as in evaluate_reward_model: each distinct comparison once, by its majority
        report["per_comparison"] = {"comparisons": comparisons, "rated_evenly": comparisons - len(kept),
                                    **paired_comparison(*(o[kept] for o in outcomes), prompts=[prompts[i] for i in kept],
                                                        n_bootstrap=n_bootstrap, seed=seed, names=("model", "baseline"))}
    report["models"] = {"model": _model_names(model), "baseline": _model_names(baseline)}
    report["ci_level"], report["n_bootstrap"], report["seed"] = CI_LEVEL, n_bootstrap, seed
    report["truncated"] = truncated
    report["data"] = _data_name(data)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(_strict_json(report), indent=2, allow_nan=False) + "\n")
    return report


def _is_comparison(path: Path) -> bool:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"models", "difference", "p_value"} <= set(report)


def _scorer(model: Any, batch_size: int | None, max_length: int | None):
    """`model` as a RewardScorer: itself, or loaded from its directories (16 sequences a batch by default)."""
    from reward.score import RewardScorer

    if not isinstance(model, RewardScorer):
        return RewardScorer(model, batch_size=16 if batch_size is None else batch_size, max_length=max_length)
    _check_loaded_scorer(batch_size, max_length)
    return model


def _check_loaded_scorer(batch_size: int | None, max_length: int | None) -> None:
    """A RewardScorer given loaded keeps its own batch size and max length: either given beside it is refused,
    not ignored."""
    for name, value in (("max_length", max_length), ("batch_size", batch_size)):
        if value is not None:
            raise UserError(f"{name}: set it when the RewardScorer is made (RewardScorer(..., {name}=)), "
                            "not for one that is already loaded")


def _truncated(scorer, chosen, rejected) -> dict[str, Any]:
    """How many pairs scoring cut (either side) and to what length: a model trained elsewhere is cut to its own
    limit, which need not be the length it trained with."""
    return {"pairs": int((chosen.truncated | rejected.truncated).sum()), "limits": scorer.length_limits()}


def _model_dirs(model: Any) -> list:
    """The directories behind `model`: a RewardScorer's, a list's, or the one given."""
    from reward.score import RewardScorer

    return model.model_dirs if isinstance(model, RewardScorer) else list(model) if isinstance(model, (list, tuple)) else [model]


def _model_names(model: Any) -> list[str]:
    from reward.data import absolute_name

    return [absolute_name(m) for m in _model_dirs(model)]


# ------------------------------------------------------------------------------------------ plots


def plot_reliability(report: dict[str, Any], path: str | Path) -> None:
    # A Figure of its own, not pyplot's: pyplot would switch the caller's backend (a notebook's inline one) to Agg.
    from matplotlib.figure import Figure

    cal = report["calibration"]
    bins = [b for b in cal["bins"] if b["n"]]
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot([0.5, 1], [0.5, 1], linestyle="--", color="grey", label="perfectly calibrated")
    if bins:
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label="model")
        for b in bins:
            ax.annotate(str(b["n"]), (b["confidence"], b["accuracy"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlim(0.5, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence: max(p, 1 - p), p = sigmoid(r_chosen - r_rejected)")
    ax.set_ylabel("accuracy of the pick")
    ax.set_title(f"reliability (ECE {cal['ece']:.3f}; calibrated: {cal['ece_if_calibrated']['mean']:.3f} "
                 f"expected at n = {report['n']})", fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _font_characters() -> set[int]:
    """The code points the fonts matplotlib draws labels with have glyphs for: the first of `font.family` and those
    after it, which it falls back on for a character the first lacks (read at each plot: rcParams may change)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    props = font_manager.FontProperties()
    find_all = getattr(font_manager.fontManager, "_find_fonts_by_props", None)  # the fallback chain, matplotlib 3.6+
    paths = find_all(props) if find_all is not None else [font_manager.findfont(props)]
    return set().union(*(FT2Font(str(path)).get_charmap() for path in paths))


def _drawable(text: str, characters: set[int]) -> str:
    """`text` with each character outside `characters` (`_font_characters`) written as its \\u escape: a box says
    nothing, and each missing glyph was a warning (a category `lang=日本語`, on a machine without CJK fonts)."""
    return "".join(c if ord(c) in characters else c.encode("unicode_escape").decode() for c in text)


def plot_accuracy(report: dict[str, Any], path: str | Path) -> None:
    from matplotlib.figure import Figure

    labels, values, lows, highs = [], [], [], []
    drawable = _font_characters()

    def add(label: str, entry: dict[str, Any]) -> None:
        if entry["n"]:
            labels.append(_drawable(f"{label} (n={entry['n']})", drawable))
            values.append(entry["accuracy"])
            # A percentile interval need not hold the estimate itself, and matplotlib refuses a negative error bar.
            lows.append(max(0.0, entry["accuracy"] - entry["ci"][0]))
            highs.append(max(0.0, entry["ci"][1] - entry["accuracy"]))

    add("all", report)
    if "per_comparison" in report:
        add("each comparison once", report["per_comparison"])
    for column, entries in report["by"].items():
        for value, entry in entries.items():
            add(f"{column}={value}"[:40], entry)
    if "length_bias" in report:
        add("chosen longer", report["length_bias"]["chosen_longer"])
        add("chosen shorter", report["length_bias"]["chosen_shorter"])
    fig = Figure(figsize=(6, 0.45 * len(labels) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(labels))
    ax.barh(y, values, xerr=[lows, highs], color="tab:blue", alpha=0.8, capsize=3)
    ax.axvline(0.5, color="grey", linestyle="--")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy, with its 95% interval\n(bootstrap; Wilson where few prompts, or all one way)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)

"""Majority vote vs reliability-weighted aggregation (Dawid-Skene) on real pairs with simulated rater panels.

Real pairs with known human labels: HH-RLHF harmless-base test (chosen beats rejected) and summarize-from-
feedback batch 13 (the workers' label; pairs rated by several workers take their majority, exact splits are
dropped). A and B are shuffled per pair so that "A wins" carries no information. Each pair is judged by k
raters drawn from a pool of 20 simulated raters, each shown a random side:

  good       right direction with p ~ U(0.85, 0.95), strong choice half the time, ties 3%
  noisy      right direction with p ~ U(0.60, 0.70), ties 10%
  left       clicks the left side with p ~ U(0.7, 0.9), otherwise answers like a good rater
  spammer    one of the five buttons at random

Accuracy is the share of pairs whose aggregated winner is the real label; a "tie" verdict counts half (a
coin would pick right half the time). Each cell is the mean over 5 seeds (panel and assignments redrawn).
The simulated raters treat the real label as the truth; the oracle column is the best any aggregation of
the same judgments could do (the Bayes verdict with every rater's true behaviour known).

Run: .venv/bin/python bench/aggregation.py   (writes bench/results/aggregation.md)
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine  # noqa: E402  (bench/common.py: one description of the machine)

from collect.aggregate import aggregate  # noqa: E402
from collect.formats import read_records  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
POOL = 20
SEEDS = 5
# name: shares of (good, noisy, left, spammer)
MIXES = {
    "clean (80% good, 20% noisy)": (0.8, 0.2, 0.0, 0.0),
    "20% left-biased": (0.6, 0.2, 0.2, 0.0),
    "30% spammers": (0.5, 0.2, 0.0, 0.3),
    "30% spammers + 10% left-biased": (0.4, 0.2, 0.1, 0.3),
    "50% spammers": (0.3, 0.2, 0.0, 0.5),
}
KINDS = ("good", "noisy", "left", "spammer")


def hh_labels() -> np.ndarray:
    """One entry per HH harmless pair: the chosen response (record A) is better, so +1 before shuffling."""
    records = read_records(DATA / "hh_harmless_base_test.jsonl.gz")
    return np.ones(len(records), dtype=int)


def summarize_labels() -> np.ndarray:
    """One label per distinct summarize pair: the sign of the workers' summed directions (splits dropped)."""
    records = read_records(DATA / "summarize_feedback_batch13.jsonl")
    votes: dict[tuple[str, str, str], int] = {}
    for r in records:
        key = (r.prompt_id or "", r.response_a or "", r.response_b or "")
        votes[key] = votes.get(key, 0) + sum(int(np.sign(j.choice)) for j in r.judgments)
    labels = np.sign(np.array(list(votes.values())))
    return labels[labels != 0]


def panel(mix: tuple[float, ...], rng: np.random.Generator) -> list[tuple[str, float]]:
    """POOL raters as (kind, parameter), with kind counts rounded from the mix shares."""
    counts = np.floor(np.array(mix) * POOL + 0.5).astype(int)
    counts[0] += POOL - counts.sum()
    raters = []
    for kind, n in zip(KINDS, counts):
        for _ in range(n):
            if kind == "good":
                raters.append((kind, rng.uniform(0.85, 0.95)))
            elif kind == "noisy":
                raters.append((kind, rng.uniform(0.60, 0.70)))
            elif kind == "left":
                raters.append((kind, rng.uniform(0.7, 0.9)))
            else:
                raters.append((kind, 0.0))
    return raters


def simulate(truth: np.ndarray, raters: list[tuple[str, float]], k: int, rng: np.random.Generator) -> pd.DataFrame:
    """k judgments per pair, vectorised: choices relative to A, with the side each rater saw."""
    n = len(truth)
    who = np.argsort(rng.random((n, len(raters))), axis=1)[:, :k].ravel()  # k distinct raters per pair
    pair = np.repeat(np.arange(n), k)
    true_dir = truth[pair]
    left_is_a = rng.random(len(who)) < 0.5
    kind = np.array([raters[r][0] for r in who])
    param = np.array([raters[r][1] for r in who])
    strong = rng.random(len(who)) < 0.5
    size = np.where(strong, 2, 1)

    def careful(p_right: np.ndarray, p_tie: float) -> np.ndarray:
        u = rng.random(len(who))
        d = np.where(u < p_tie, 0, np.where(rng.random(len(who)) < p_right, true_dir, -true_dir))
        return d * size

    good_like = careful(np.where(kind == "left", 0.9, param), 0.03)
    noisy = careful(param, 0.10)
    left_side = np.where(left_is_a, 1, -1) * size
    clicks_left = rng.random(len(who)) < param
    spam = rng.integers(-2, 3, len(who))
    choice = np.select(
        [kind == "good", kind == "noisy", (kind == "left") & clicks_left, kind == "left", kind == "spammer"],
        [good_like, noisy, left_side, good_like, spam],
    )
    return pd.DataFrame({"pair_id": pair, "rater_id": who, "choice": choice, "left_is_a": left_is_a})


def true_confusion(kind: str, param: float) -> np.ndarray:
    """P(button | true direction) in screen coordinates as `simulate` draws it: rows right/tie/left better,
    columns right>>, right>, tie, left>, left>>. The tie row is never used (no pair here is a true tie)."""

    def careful(p_right: float, p_tie: float) -> np.ndarray:
        m = np.full((3, 5), 0.2)
        m[2] = [(1 - p_tie) * (1 - p_right) / 2, (1 - p_tie) * (1 - p_right) / 2, p_tie,
                (1 - p_tie) * p_right / 2, (1 - p_tie) * p_right / 2]
        m[0] = m[2][::-1]
        return m

    if kind == "good":
        return careful(param, 0.03)
    if kind == "noisy":
        return careful(param, 0.10)
    if kind == "spammer":
        return np.full((3, 5), 0.2)
    left = np.zeros((3, 5))
    left[:, 3:] = 0.5
    return param * left + (1 - param) * careful(0.9, 0.03)


def oracle(judgments: pd.DataFrame, raters: list[tuple[str, float]], n_pairs: int) -> np.ndarray:
    """The Bayes verdict (+1 A, -1 B) knowing every rater's true behaviour: a ceiling for any aggregation."""
    confusion = np.stack([true_confusion(*r) for r in raters])
    mirrored = ~judgments["left_is_a"].to_numpy()
    button = judgments["choice"].to_numpy() + 2
    screen_button = np.where(mirrored, 4 - button, button)
    log_like = np.zeros((n_pairs, 2))
    for column, z in enumerate((0, 2)):  # truth B better, A better
        screen_truth = np.where(mirrored, 2 - z, z)
        np.add.at(log_like[:, column], judgments["pair_id"].to_numpy(),
                  np.log(confusion[judgments["rater_id"].to_numpy(), screen_truth, screen_button]))
    return np.where(log_like[:, 1] > log_like[:, 0], 1, -1)


def accuracy(table: pd.DataFrame, truth: np.ndarray) -> tuple[float, float]:
    """(accuracy with ties counting half, share of tie verdicts)."""
    verdict = table.sort_values("pair_id")["winner"].map({"A": 1, "B": -1, "tie": 0}).to_numpy()
    hits = np.where(verdict == 0, 0.5, (verdict == truth).astype(float))
    return float(hits.mean()), float((verdict == 0).mean())


def run(name: str, labels: np.ndarray) -> list[dict]:
    rows = []
    for mix_name, mix in MIXES.items():
        for k in (3, 5):
            results = {"majority": [], "weighted": [], "oracle": [], "ties": [], "seconds": []}
            for seed in range(SEEDS):
                rng = np.random.default_rng([seed, k, list(MIXES).index(mix_name)])
                truth = labels * np.where(rng.random(len(labels)) < 0.5, 1, -1)  # shuffle A and B
                raters = panel(mix, rng)
                judgments = simulate(truth, raters, k, rng)
                results["oracle"].append(float((oracle(judgments, raters, len(truth)) == truth).mean()))
                majority, ties = accuracy(aggregate(judgments, "majority"), truth)
                start = time.perf_counter()
                weighted, _ = accuracy(aggregate(judgments, "weighted"), truth)
                results["seconds"].append(time.perf_counter() - start)
                results["majority"].append(majority)
                results["weighted"].append(weighted)
                results["ties"].append(ties)
            m, w = np.array(results["majority"]), np.array(results["weighted"])
            rows.append({
                "data": name, "mix": mix_name, "k": k, "pairs": len(labels),
                "majority": m.mean(), "majority_sd": m.std(ddof=1), "weighted": w.mean(), "weighted_sd": w.std(ddof=1),
                "gain_points": 100 * (w - m).mean(), "gain_sd": 100 * (w - m).std(ddof=1),
                "oracle": np.mean(results["oracle"]), "majority_ties": np.mean(results["ties"]), "weighted_seconds": np.mean(results["seconds"]),
            })
            r = rows[-1]
            print(f"{name:10s} {mix_name:32s} k={k}  majority {r['majority']:.3f}  weighted {r['weighted']:.3f}"
                  f"  gain {r['gain_points']:+.1f} pts  oracle {r['oracle']:.3f}", flush=True)
    return rows


def markdown(rows: list[dict], command: str, seconds: float) -> str:
    lines = [
        "# Aggregation: majority vote vs Dawid-Skene on real pairs with simulated raters",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command}` ({seconds:.0f} s)",
        "- data: `../shared/data/hh_harmless_base_test.jsonl.gz` (HH-RLHF harmless-base, test split; label: chosen) "
        "and `../shared/data/summarize_feedback_batch13.jsonl` (summarize-from-feedback batch 13; label: the "
        "workers' majority per distinct pair, exact splits dropped)",
        f"- panels: {POOL} simulated raters per run (good, noisy, left-biased, spammers; see the docstring of "
        "bench/aggregation.py), k raters per pair, sides drawn at random; A and B shuffled per pair",
        f"- accuracy: share of pairs whose verdict is the real label, a tie verdict counting half; mean (sd) over "
        f"{SEEDS} seeds; majority's tie verdicts come from split votes",
        "- oracle: the Bayes verdict knowing every simulated rater's true behaviour, a ceiling for any "
        "aggregation of the same judgments",
        f"- pairs: HH harmless {rows[0]['pairs']}, summarize {rows[-1]['pairs']}",
        "",
        "| data | mix | k | majority | weighted (Dawid-Skene) | gain (points) | oracle | majority ties | fit (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['mix']} | {r['k']} | {r['majority']:.3f} ({r['majority_sd']:.3f}) | "
            f"{r['weighted']:.3f} ({r['weighted_sd']:.3f}) | {r['gain_points']:+.1f} ({r['gain_sd']:.1f}) | "
            f"{r['oracle']:.3f} | "
            f"{r['majority_ties']:.1%} | {r['weighted_seconds']:.2f} |"
        )
    lines += ["", "## Target: weighted at least 5 points above majority with 30% spammers, k = 3", ""]
    for r in rows:
        if r["mix"] == "30% spammers" and r["k"] == 3:
            verdict = "met" if r["gain_points"] >= 5 else "NOT met"
            lines.append(f"- {r['data']}: {r['gain_points']:+.1f} points ({r['majority']:.3f} -> "
                         f"{r['weighted']:.3f}): {verdict}")
    return "\n".join(lines) + "\n"


def main() -> None:
    start = time.perf_counter()
    hh, summarize = hh_labels(), summarize_labels()
    print(f"pairs: HH harmless {len(hh)}, summarize {len(summarize)}")
    rows = run("HH harmless", hh) + run("summarize", summarize)
    text = markdown(rows, "python bench/aggregation.py", time.perf_counter() - start)
    out = ROOT / "bench" / "results" / "aggregation.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(text)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""How often the evaluation's 95% intervals hold the true value, by simulation: plain against expanded percentiles.

`reward eval` and `reward compare` give accuracy and the difference of two models with a bootstrap interval that
resamples whole prompts (`reward.evaluate.bootstrap_interval`). This draws many test sets whose true accuracy is
known and counts how often each kind of interval holds it, both from the same resamples:

- plain percentile: the 2.5th and 97.5th percentiles of the resampled means (Chatbot Arena's);
- expanded percentile (what prefloop gives): the percentiles widened for the number of prompts n, as Student's t
  with the variance divided by n - 1 would be (Hesterberg 2015).

Three kinds of test set, at 10 to 200 prompts:
- one pair a prompt, every pair right with probability 0.65 (HH's test pairs);
- 1-3 pairs a prompt, each prompt's own accuracy drawn from Beta(6.5, 3.5), mean 0.65 (summarize's, where a post's
  pairs go together);
- the difference of two models on those clustered pairs: the second right with probability 0.8 where the first is,
  0.25 where it is not (true difference 0.65 - 0.6075 = +0.0425).

    python bench/interval_coverage.py            # 2,000 test sets a cell, 1,000 resamples each (under a minute)
    python bench/interval_coverage.py --quick    # 200 test sets a cell, into its work folder
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import command, machine, write_report  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "interval_coverage.md"
KINDS = {"one pair a prompt": "single", "1-3 pairs a prompt": "clustered", "difference of two models": "difference"}
PROMPTS = (10, 20, 40, 100, 200)
ACCURACY = 0.65
SECOND_IF_FIRST_RIGHT, SECOND_IF_FIRST_WRONG = 0.8, 0.25


def test_set(kind: str, prompts: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(per-pair values, each pair's prompt, the true mean) of one simulated test set."""
    sizes = np.ones(prompts, dtype=int) if kind == "single" else rng.integers(1, 4, prompts)
    prompt_of = np.repeat(np.arange(prompts), sizes)
    accuracy = np.full(prompts, ACCURACY) if kind == "single" else rng.beta(6.5, 3.5, prompts)
    first = (rng.random(len(prompt_of)) < accuracy[prompt_of]).astype(float)
    if kind != "difference":
        return first, prompt_of, ACCURACY
    second = (rng.random(len(prompt_of)) < np.where(first == 1, SECOND_IF_FIRST_RIGHT, SECOND_IF_FIRST_WRONG))
    truth = ACCURACY - (SECOND_IF_FIRST_RIGHT * ACCURACY + SECOND_IF_FIRST_WRONG * (1 - ACCURACY))
    return first - second, prompt_of, truth


def coverage(kind: str, prompts: int, sets: int, resamples: int, seed: int) -> dict[str, float]:
    """Share of `sets` simulated test sets whose interval holds the true value, and the mean width, for each kind
    of interval; both intervals of a set come from the same resamples (the same seed)."""
    from reward.evaluate import bootstrap_interval

    rng = np.random.default_rng(seed)
    held = {True: 0, False: 0}
    width = {True: 0.0, False: 0.0}
    for i in range(sets):
        values, prompt_of, truth = test_set(kind, prompts, rng)
        for expanded in (False, True):
            lo, hi = bootstrap_interval(values, resamples, seed=i, clusters=prompt_of, expanded=expanded)
            held[expanded] += lo <= truth <= hi
            width[expanded] += hi - lo
    return {"plain": held[False] / sets, "expanded": held[True] / sets,
            "plain_width": width[False] / sets, "expanded_width": width[True] / sets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=2000, help="simulated test sets a cell (default 2000)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples an interval (default 1000, "
                        "`reward eval`'s)")
    parser.add_argument("--quick", action="store_true", help="200 test sets a cell, written into the work folder")
    parser.add_argument("--out", default=None, help="the Markdown results file (default: "
                        "bench/results/interval_coverage.md)")
    args = parser.parse_args()
    sets = 200 if args.quick else args.sets
    started = time.time()
    lines = ["| test set | prompts | plain percentile: coverage (mean width) | expanded percentile: coverage (mean "
             "width) |", "|---|---|---|---|"]
    for name, kind in KINDS.items():
        for prompts in PROMPTS:
            c = coverage(kind, prompts, sets, args.resamples, seed=prompts)
            lines.append(f"| {name} | {prompts} | {c['plain']:.3f} ({c['plain_width']:.3f}) | "
                         f"{c['expanded']:.3f} ({c['expanded_width']:.3f}) |")
            print(lines[-1], flush=True)
    margin = 1.96 * np.sqrt(0.95 * 0.05 / sets)
    report = "\n".join([
        "# Bootstrap intervals: how often they hold the true value", "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine()}",
        f"- command: `{command()}` (from the repository root), {time.time() - started:.0f} s",
        f"- {sets} simulated test sets a cell, {args.resamples} resamples an interval, 95% intervals; a coverage "
        f"of 0.95 is measured to within +-{margin:.3f} (95%)",
        "- every interval resamples whole prompts (`reward.evaluate.bootstrap_interval`); `reward eval` gives the "
        "Wilson interval instead below 10 prompts, and `reward compare` gives none below 10 prompts that tell the "
        "two models apart, so the 10-prompt rows show what those fallbacks avoid", "",
        *lines, ""])
    work = Path(tempfile.mkdtemp(prefix="prefloop-bench-coverage-")) if args.quick else RESULTS.parent
    write_report(report, args.out, args.quick, RESULTS, work)


if __name__ == "__main__":
    main()

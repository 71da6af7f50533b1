"""How often the evaluation's 95% intervals hold the true value, by simulation: plain against expanded percentiles.

`reward eval` and `reward compare` give accuracy and the difference of two models with a bootstrap interval that
resamples whole prompts (`reward.evaluate.bootstrap_interval`), through `accuracy_entry` and `paired_comparison`,
which give Wilson's interval, or none, where the bootstrap has too little to resample. This draws many test sets
whose true accuracy is known and counts how often each interval holds it, before and now from the same resamples:

- before: plain percentiles, the 2.5th and 97.5th of the resampled means (Chatbot Arena's);
- now (what prefloop gives): the percentiles widened for the number of prompts n, as Student's t with the variance
  divided by n - 1 would be (Hesterberg 2015).

Three kinds of test set, at 10 to 200 prompts (and Wilson's interval over prompts beside them, for accuracy):
- one pair a prompt, every pair right with probability 0.65 (HH's test pairs);
- 1-3 pairs a prompt, each prompt's own accuracy drawn from Beta(6.5, 3.5), mean 0.65 (summarize's, where a post's
  pairs go together);
- the difference of two models on those clustered pairs: the second right with probability 0.8 where the first is,
  0.25 where it is not (true difference 0.65 - 0.6075 = +0.0425).

    python bench/interval_coverage.py            # 2,000 test sets a cell, 1,000 resamples each (about a minute)
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


def test_set(kind: str, prompts: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                                         float]:
    """(the first model's per-pair outcomes, the second's for a difference (else None), each pair's prompt, the true
    accuracy or difference) of one simulated test set."""
    sizes = np.ones(prompts, dtype=int) if kind == "single" else rng.integers(1, 4, prompts)
    prompt_of = np.repeat(np.arange(prompts), sizes)
    accuracy = np.full(prompts, ACCURACY) if kind == "single" else rng.beta(6.5, 3.5, prompts)
    first = rng.random(len(prompt_of)) < accuracy[prompt_of]
    if kind != "difference":
        return first, None, prompt_of, ACCURACY
    second = rng.random(len(prompt_of)) < np.where(first, SECOND_IF_FIRST_RIGHT, SECOND_IF_FIRST_WRONG)
    truth = ACCURACY - (SECOND_IF_FIRST_RIGHT * ACCURACY + SECOND_IF_FIRST_WRONG * (1 - ACCURACY))
    return first, second, prompt_of, truth


def coverage(kind: str, prompts: int, sets: int, resamples: int, seed: int) -> dict[str, float]:
    """For `sets` simulated test sets: the share whose interval holds the true value, and the mean width, of the
    interval prefloop gives (`accuracy_entry`: the expanded bootstrap, or Wilson over prompts where it stands in;
    `paired_comparison` for a difference, which gives none where under 10 prompts tell the models apart), of what it
    gave before (the same, with plain percentiles), and of Wilson's over prompts for every set (accuracy only).
    Coverage counts only sets given an interval; `given` is their share."""
    from reward.evaluate import accuracy_entry, bootstrap_interval, paired_comparison, wilson_interval

    rng = np.random.default_rng(seed)
    held = {"now": 0, "before": 0} | ({} if kind == "difference" else {"wilson": 0})
    width = dict.fromkeys(held, 0.0)
    given = 0
    for i in range(sets):
        first, second, prompt_of, truth = test_set(kind, prompts, rng)
        values = first.astype(float) - (second if second is not None else 0)
        if second is not None:
            now = paired_comparison(first, second, prompt_of, resamples, seed=i)
            if now["ci"][0] is None:
                continue
            intervals = {"now": now["ci"], "before": bootstrap_interval(values, resamples, seed=i, clusters=prompt_of,
                                                                        expanded=False)}
        else:
            now = accuracy_entry(values, resamples, i, prompt_of)
            before = (bootstrap_interval(values, resamples, seed=i, clusters=prompt_of, expanded=False)
                      if now["ci_method"].startswith("bootstrap") else now["ci"])
            intervals = {"now": now["ci"], "before": before,
                         "wilson": wilson_interval(values.mean() * prompts, prompts)}
        given += 1
        for name, (lo, hi) in intervals.items():
            held[name] += lo <= truth <= hi
            width[name] += hi - lo
    per = max(given, 1)
    return {"given": given / sets, **{name: held[name] / per for name in held},
            **{f"{name}_width": width[name] / per for name in width}}


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
    lines = ["| test set | prompts | given an interval | before (plain percentile): coverage (mean width) | "
             "now (expanded percentile): coverage (mean width) | Wilson over prompts: coverage (mean width) |",
             "|---|---|---|---|---|---|"]
    for name, kind in KINDS.items():
        for prompts in PROMPTS:
            c = coverage(kind, prompts, sets, args.resamples, seed=prompts)
            cells = {key: f"{c[key]:.3f} ({c[key + '_width']:.3f})" if c["given"] and key in c else "-"
                     for key in ("before", "now", "wilson")}
            lines.append(f"| {name} | {prompts} | {c['given']:.0%} | {cells['before']} | {cells['now']} | "
                         f"{cells['wilson']} |")
            print(lines[-1], flush=True)
    margin = 1.96 * np.sqrt(0.95 * 0.05 / sets)
    report = "\n".join([
        "# Bootstrap intervals: how often they hold the true value", "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine()}",
        f"- command: `{command()}` (from the repository root), {time.time() - started:.0f} s",
        f"- {sets} simulated test sets a cell, {args.resamples} resamples an interval, 95% intervals; a coverage "
        f"of 0.95 over all {sets} sets is measured to within +-{margin:.3f} (95%), over fewer (a difference's sets "
        "given an interval) less closely",
        "- now: what `reward eval` gives for accuracy (`accuracy_entry`: the expanded bootstrap over prompts, or the "
        "Wilson interval over prompts below 10 prompts or where every prompt is as often right) and `reward "
        "compare` for a difference (`paired_comparison`: no interval where under 10 prompts tell the two apart, "
        "so its coverage counts the sets given one); before: the same with plain percentiles; Wilson over prompts: "
        "that interval for every set, for comparison", "",
        *lines, ""])
    work = Path(tempfile.mkdtemp(prefix="prefloop-bench-coverage-")) if args.quick else RESULTS.parent
    write_report(report, args.out, args.quick, RESULTS, work)


if __name__ == "__main__":
    main()

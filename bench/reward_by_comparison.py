"""Reward-model test accuracy counted per distinct comparison instead of per row, from a bench/reward.py run.

Summarize-from-feedback has several workers rate some comparisons (the same post and the same two summaries): in
the bench's test split, 6 of 181 comparisons carry 46 of the 222 rows. Counted per row, a model that ranks one of
those right gains as much as from 9 comparisons rated once. Here each distinct comparison counts once, labelled
as most of its raters labelled it (comparisons whose raters split evenly are left out), and each prefloop side is
compared with TRL's defaults of the same seed, and over all seeds pooled, pair by pair
(`reward.evaluate.paired_comparison`: bootstrap interval and exact permutation test over prompts).

bench/reward.py adds these tables to its own report; this script makes them from what an earlier
`python bench/reward.py --work-dir DIR` left in DIR (the test split and each side's per-row outcomes), training
nothing (`make bench` skips it):

    python bench/reward_by_comparison.py --work-dir /tmp/s36/sum3 --out bench/results/reward_by_comparison.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import command, machine, write_report  # noqa: E402
from bench.reward import SIDES  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reward_by_comparison.md"


def by_comparison_section(work: Path, heading: str = "##", runs: set[tuple[str, int]] | None = None) -> list[str]:
    """The Markdown tables, one per data set whose test split and per-row outcomes `work` holds, each under a
    `heading` of its own; `runs`: only these (side, seed) runs (bench/reward.py's own, not those an earlier run
    left in the same --work-dir)."""
    import datasets

    from reward.data import prompt_of_rows
    from reward.evaluate import distinct_comparisons, paired_comparison

    lines = []
    for test_path in sorted(work.glob("*_test.parquet")):
        name = test_path.name.removesuffix("_test.parquet")
        test = datasets.Dataset.from_parquet(str(test_path))
        prompts = prompt_of_rows(test)
        _, kept = distinct_comparisons(test["chosen"], test["rejected"], prompts)
        sizes = Counter(Counter(json.dumps(p, sort_keys=True) for p in prompts).values())
        outcomes = {}
        for path in work.glob(f"{name}_*.json"):
            match = re.fullmatch(rf"{re.escape(name)}_(.+?)(?:_seed(\d+))?\.json", path.name)
            if not match or match[1] not in SIDES or (runs is not None and (match[1], int(match[2] or 0)) not in runs):
                continue
            result = json.loads(path.read_text())
            if "test_correct" not in result:  # runs before 2026-12-05 kept no outcomes
                continue
            if len(result["test_correct"]) != len(test):
                raise SystemExit(f"{path}: {len(result['test_correct'])} outcomes for the {len(test)} test rows of "
                                 f"{test_path.name}: a run on another split")
            outcomes[match[1], int(match[2] or 0)] = result["test_correct"]
        lines += [f"{heading} {name}: {len(test)} test rows, {len(kept)} distinct comparisons with a majority label", "",
                  "Prompts by how many rows they hold: " + ", ".join(f"{n} rows: {count}" for n, count in
                                                                      sorted(sizes.items())) + ".", "",
                  "| side | seed | accuracy per row | per comparison | vs TRL per comparison [95% CI] | "
                  "only this side right / only TRL right | p |", "|---|---|---|---|---|---|---|"]
        sides = sorted({side for side, _ in outcomes}, key=list(SIDES).index)
        for side in sides:
            pooled: tuple[list, list, list] = ([], [], [])
            seeds = sorted(seed for s, seed in outcomes if s == side)
            for seed in seeds:
                correct = outcomes[side, seed]
                ours = [correct[i] for i in kept]
                cells = [SIDES[side], str(seed), f"{sum(correct) / len(correct):.3f}", f"{sum(ours) / len(ours):.3f}"]
                trl = outcomes.get(("trl-defaults", seed))
                if side != "trl-defaults" and trl is not None:
                    theirs = [trl[i] for i in kept]
                    cells += compared(paired_comparison, ours, theirs, [prompts[i] for i in kept])
                    for into, values in zip(pooled, (ours, theirs, [prompts[i] for i in kept])):
                        into += values
                else:
                    cells += ["", "", ""]
                lines.append("| " + " | ".join(cells) + " |")
            if len(seeds) > 1 and pooled[0]:
                accuracy = sum(pooled[0]) / len(pooled[0])
                lines.append("| " + " | ".join([SIDES[side], "all: " + ", ".join(map(str, seeds)), "",
                                                f"{accuracy:.3f}", *compared(paired_comparison, *pooled)]) + " |")
        lines.append("")
    return lines


DESCRIPTION = ("Per row: what bench/reward.py reports; per comparison: each distinct comparison (the same prompt and "
               "the same two responses) once, as most of its raters labelled it, those rated evenly both ways left "
               "out; with several seeds, the `all` row pools them (each comparison once per seed, a prompt's "
               "comparisons from every seed resampled and sign-flipped together).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="a bench/reward.py --work-dir that holds finished runs")
    parser.add_argument("--out", default=None, help="the Markdown results file (default: "
                        "bench/results/reward_by_comparison.md)")
    args = parser.parse_args()
    work = Path(args.work_dir)
    lines = by_comparison_section(work)
    if not lines:
        raise SystemExit(f"{work}: no *_test.parquet; give the --work-dir of a bench/reward.py run")
    report = "\n".join([
        "# Reward models: test accuracy per distinct comparison", "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine()} (this script only reads the outcomes the bench run saved)",
        f"- command: `{command()}` (from the repository root)",
        f"- runs read: {work} (a bench/reward.py --work-dir; its results file names the command)",
        f"- {DESCRIPTION}", "",
        *lines])
    write_report(report, args.out, False, RESULTS, work)


def compared(paired_comparison, ours: list, theirs: list, prompts: list) -> list[str]:
    c = paired_comparison(ours, theirs, prompts, n_bootstrap=2000)
    interval = f" [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]" if c["ci_method"] else ""
    return [f"{100 * c['difference']:+.1f} points{interval}", f"{c['only_first_right']} / {c['only_second_right']}",
            f"{c['p_value']:.3g}"]


if __name__ == "__main__":
    main()

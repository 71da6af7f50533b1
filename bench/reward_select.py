"""Choosing the reward recipe without looking at the test pairs: candidates compared on validation splits.

    .venv/bin/python bench/reward_select.py            # 5 MiniLM candidates x 2 datasets x 2 splits (about 55 min)
    .venv/bin/python bench/reward_select.py --quick    # a smoke run: 200 pairs, 30 s budgets, one split

bench/reward.py scores recipes on its test pairs; choosing a default by those same numbers would overfit the
test set (the summarize test set is 222 pairs: one point of accuracy is two pairs). Here every candidate trains
on 70% of bench/reward.py's *training* pairs and is scored on the other 30% (whole prompts on one side, so a
post or a dialogue opening is never on both), over several such splits; the test pairs are never read.

Each candidate is one of bench/reward.py's prefloop sides (`PREFLOOP_SIDES`: prefloop's defaults plus the changes
listed there, such as its own 10% held out for choosing the step or none), seed 0, the same 600 s budget as
bench/reward.py; by default the sides on MiniLM, TRL's backbone in bench/reward.py. Each candidate's accuracy is
also given as a difference from the first candidate named, paired by split. Pairs per second are measured as in
bench/reward.py, on 70% of the data.

    .venv/bin/python bench/reward_select.py --datasets hh \
        --candidates prefloop-smollm2-20-evals2,prefloop-smollm2-20-all-pairs   # hold 10% out or not
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import chosen, command, machine, write_report  # noqa: E402
from bench.reward import PREFLOOP_SIDES, SIDES, TRAINING_PAIRS, TRL_BACKBONE_SIDES  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reward_select.md"
# The candidates are bench/reward.py's prefloop sides: one definition of each recipe.
CANDIDATES = list(PREFLOOP_SIDES)
VALIDATION_SHARE = 0.3


def validation_splits(rows: list[dict], splits: range):
    """(fit, validation) datasets, one pair per split number k (seed 100 + k); whole prompts go to one side."""
    import datasets

    from reward.train import split_by_prompt

    dataset = datasets.Dataset.from_list(rows)
    return [split_by_prompt(dataset, VALIDATION_SHARE, seed=100 + k) for k in splits]


def run_candidate(name: str, fit, validation, out_dir: Path, budget_s: float) -> dict:
    from reward.evaluate import evaluate_reward_model
    from reward.train import train_reward_model

    result = train_reward_model(PREFLOOP_SIDES[name].config(fit, str(out_dir), budget_s))
    report = evaluate_reward_model(str(out_dir), validation, n_bootstrap=1000)
    return {"accuracy": report["accuracy"], "ci": report["ci"], "pairs_per_second": result.pairs_per_second,
            "train_seconds": result.train_seconds}


def render_report(results: dict, sizes: dict, args, started: datetime.datetime, where: str) -> str:
    names = list(dict.fromkeys(name for _, name, _ in results))
    minutes = (datetime.datetime.now().astimezone() - started).total_seconds() / 60
    lines = [
        "# Choosing the reward recipe on validation splits of the training pairs",
        "",
        f"- Command: `{command()}`",
        f"- Machine: {where}",
        f"- Started {started:%Y-%m-%d %H:%M %Z}, took {minutes:.0f} min",
        f"- Data: bench/reward.py's training pairs only ({', '.join(f'{d}: {n}' for d, n in sizes.items())}); "
        f"each split fits on {1 - VALIDATION_SHARE:.0%} and validates on {VALIDATION_SHARE:.0%}, whole prompts on "
        "one side (`reward.train.split_by_prompt`, seeds 100, 101, ...); the test pairs are never read.",
        "",
        f"| data | candidate | validation accuracy per split [95% CI] | mean | vs {names[0]}, paired by split "
        "| pairs/s |",
        "|---|---|---|---|---|---|",
    ]
    for data in sizes:
        reference = [results[(data, names[0], k)]["accuracy"] for k in range(args.splits)
                     if (data, names[0], k) in results]
        for name in names:
            runs = [results[(data, name, k)] for k in range(args.splits) if (data, name, k) in results]
            if not runs:
                continue
            accs = [r["accuracy"] for r in runs]
            per_split = "; ".join(f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" for r in runs)
            paired = ("" if name == names[0] or len(reference) != len(accs) else
                      f"{100 * statistics.mean(a - b for a, b in zip(accs, reference)):+.1f} points")
            speed = statistics.mean(r["pairs_per_second"] for r in runs)
            lines.append(f"| {data} | {name} | {per_split} | {statistics.mean(accs):.3f} | {paired} | {speed:.1f} |")
    lines += ["", "Candidates:", ""]
    lines += [f"- `{name}`: {SIDES[name]}; {PREFLOOP_SIDES[name].exactly()}" for name in names]
    return "\n".join(lines) + "\n"


def checked_runs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The candidates named by --candidates, after an argparse error for any unknown candidate or dataset or for
    fewer than one split; --quick's smoke settings (one split, 30 s budgets) applied to `args`."""
    names = chosen(parser, "--candidates", args.candidates, CANDIDATES)
    chosen(parser, "--datasets", args.datasets, TRAINING_PAIRS)
    if args.splits < 1:
        parser.error(f"--splits must be at least 1, got {args.splits}")
    if args.quick:
        args.splits, args.budget_s = 1, 30.0
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="hh,summarize")
    parser.add_argument("--candidates", default=",".join(TRL_BACKBONE_SIDES),
                        help="comma-separated subset of " + ", ".join(CANDIDATES) + "; the first is the reference")
    parser.add_argument("--splits", type=int, default=2, help="validation splits per dataset")
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock budget per run")
    parser.add_argument("--quick", action="store_true", help="200 pairs, 30 s budgets, one split: a smoke run")
    parser.add_argument("--work-dir", default=None, help="where the models go (default: a temp dir)")
    parser.add_argument("--out", default=None, help="the Markdown results file (default: "
                        "bench/results/reward_select.md; a --quick run writes into its work folder)")
    args = parser.parse_args()
    names = checked_runs(parser, args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="prefloop-bench-reward-select-"))
    started = datetime.datetime.now().astimezone()
    where = machine()
    results: dict[tuple[str, str, int], dict] = {}
    sizes: dict[str, int] = {}
    for data in args.datasets.split(","):
        rows = TRAINING_PAIRS[data]()[: 200 if args.quick else None]
        sizes[data] = len(rows)
        for k, (fit, validation) in enumerate(validation_splits(rows, range(args.splits))):
            for name in names:
                t0 = time.monotonic()
                r = run_candidate(name, fit, validation, work / f"{data}_{name}_split{k}", args.budget_s)
                results[(data, name, k)] = r
                print(f"{data} split {k} ({len(fit)} fit / {len(validation)} validation) {name}: "
                      f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}], {r['pairs_per_second']:.1f} pairs/s, "
                      f"{time.monotonic() - t0:.0f} s", flush=True)
    report = render_report(results, sizes, args, started, where)
    write_report(report, args.out, args.quick, RESULTS, work)


if __name__ == "__main__":
    main()

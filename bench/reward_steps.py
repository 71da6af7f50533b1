"""Benchmark: the step a reward run keeps, against what every evaluated step scores on the test pairs.

    .venv/bin/python bench/reward_steps.py             # prefloop's default recipe, seeds 0-2 (about 50 min)
    .venv/bin/python bench/reward_steps.py --quick     # a smoke run: small splits, 12 steps, one seed

A run evaluates its held-out pairs (10% of the training pairs, whole prompts, drawn by the run's seed) a few times
an epoch and keeps one step (`reward.train.keeps_latest`). That choice can only be judged on pairs it never saw,
so here each run also saves the model at every held-out evaluation and scores it on bench/reward.py's test pairs
(reward.evaluate). The test pairs only show what each choice gave: nothing in the run reads them.

For each dataset and seed the table gives the step prefloop kept, the step with the highest held-out accuracy
(the plain reading of "keep the best checkpoint", and what prefloop did until a wrong choice on summarize showed
its noise), and the last step, each with its test accuracy; then every step's held-out and test accuracy.
Runs train the whole schedule with no time budget: scoring the test pairs at each step would otherwise eat it
(the default recipe finishes its 2 epochs within bench/reward.py's 600 s on both datasets anyway).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import chosen, command, machine, write_report  # noqa: E402
from bench.reward import PREFLOOP_SIDES, SIDES, train_test_splits  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reward_steps.md"
# LoRA sides are left out: a PEFT model saves only its adapter, which the scorer does not load mid-run.
STEP_SIDES = [name for name, side in PREFLOOP_SIDES.items() if not side.lora]


def scores_at_each_evaluation(pairs, work: Path, max_length: int, truncation_side: str):
    """A TrainerCallback that, after each held-out evaluation, saves the model and scores it on `pairs` (pairs the
    run never reads, such as the test pairs); the accuracies land in its `by_step` ({step: accuracy})."""
    from transformers import TrainerCallback

    from reward.evaluate import evaluate_reward_model

    class TestScores(TrainerCallback):
        def __init__(self):
            self.by_step: dict[int, float] = {}

        def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.global_step in self.by_step:
                return
            folder = work / f"step{state.global_step}"
            model.save_pretrained(folder)
            processing_class.save_pretrained(folder)
            (folder / "prefloop.json").write_text(
                json.dumps({"max_length": max_length, "truncation_side": truncation_side}))
            self.by_step[state.global_step] = evaluate_reward_model(str(folder), pairs, n_bootstrap=200)["accuracy"]
            shutil.rmtree(folder)

    return TestScores()


def run(side: str, train, test, seed: int, work: Path, max_steps: int | None) -> dict:
    """Train `side` on `train` with the test pairs scored at every held-out evaluation; the steps and choices."""
    from reward.evaluate import evaluate_reward_model
    from reward.train import train_reward_model

    config = PREFLOOP_SIDES[side].config(train, str(work / "model"), None, seed=seed)
    if max_steps:
        config.max_steps = max_steps
    scores = scores_at_each_evaluation(test, work, config.max_length, config.truncation_side)
    config.callbacks = [scores]
    result = train_reward_model(config)
    kept_test = evaluate_reward_model(str(work / "model"), test, n_bootstrap=200)["accuracy"]
    steps = [{"step": e["step"], "held_out": e["accuracy"], "test": scores.by_step[e["step"]]}
             for e in result.evaluations]
    # The saved directory must be the kept step: scored again from disk it gives that step's test accuracy.
    kept = next(s for s in steps if s["step"] == result.best_step)
    if abs(kept_test - kept["test"]) > 1e-9:
        raise RuntimeError(f"the saved model scores {kept_test:.4f}, its step {kept['step']} scored {kept['test']:.4f}")
    highest = max(steps, key=lambda s: s["held_out"])  # the first of equals, as a running maximum keeps it
    return {"steps": steps, "kept": kept, "highest_held_out": highest, "last": steps[-1], "n_eval": result.n_eval}


def render_report(results: dict, sizes: dict, side: str, started: datetime.datetime, where: str) -> str:
    minutes = (datetime.datetime.now().astimezone() - started).total_seconds() / 60
    lines = [
        "# The step a reward run keeps, against every step's test accuracy",
        "",
        f"- Command: `{command()}`",
        f"- Machine: {where}",
        f"- Started {started:%Y-%m-%d %H:%M %Z}, took {minutes:.0f} min",
        f"- Recipe: `{side}` ({SIDES[side]}; {PREFLOOP_SIDES[side].exactly()}), no time budget",
        f"- Data: bench/reward.py's splits ({', '.join(f'{d}: {n[0]} train / {n[1]} test' for d, n in sizes.items())});"
        " each run holds out 10% of its training pairs by prompt, drawn by its seed.",
        "",
        "| data | seed | held-out pairs | kept by prefloop: step, test | highest held-out: step, test "
        "| last step: step, test | best test of any step |",
        "|---|---|---|---|---|---|---|",
    ]
    for (data, seed), r in results.items():
        cells = [f"{r[k]['step']}, {r[k]['test']:.3f}" for k in ("kept", "highest_held_out", "last")]
        best = max(s["test"] for s in r["steps"])
        lines.append(f"| {data} | {seed} | {r['n_eval']} | {' | '.join(cells)} | {best:.3f} |")
    lines += ["", "Mean test accuracy over the seeds:", ""]
    for kind, label in (("kept", "kept by prefloop"), ("highest_held_out", "highest held-out"), ("last", "last step")):
        means = [(d, [r[kind]["test"] for (data, _), r in results.items() if data == d]) for d in sizes]
        lines.append(f"- {label}: " + ", ".join(f"{d} {sum(v) / len(v):.3f}" for d, v in means if v))
    lines += ["", "Every evaluated step (held-out accuracy / test accuracy):", ""]
    for (data, seed), r in results.items():
        row = "; ".join(f"{s['step']}: {s['held_out']:.3f} / {s['test']:.3f}" for s in r["steps"])
        lines.append(f"- {data}, seed {seed}: {row}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", default="prefloop", help="one of " + ", ".join(STEP_SIDES))
    parser.add_argument("--datasets", default="hh,summarize")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (held-out split, head, order)")
    parser.add_argument("--quick", action="store_true", help="small splits, 12 steps, seed 0: a smoke run")
    parser.add_argument("--work-dir", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--out", default=None, help="the Markdown results file (default: "
                        "bench/results/reward_steps.md; a --quick run writes into its work folder)")
    args = parser.parse_args()
    chosen(parser, "--side", args.side, STEP_SIDES)
    names = chosen(parser, "--datasets", args.datasets, ["hh", "summarize"])
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if args.quick:
        seeds = seeds[:1]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="prefloop-bench-reward-steps-"))
    started = datetime.datetime.now().astimezone()
    where = machine()
    import datasets

    results, sizes = {}, {}
    for data, (train, test) in train_test_splits(names, args.quick).items():
        sizes[data] = (len(train), len(test))
        train_set, test_set = datasets.Dataset.from_list(train), datasets.Dataset.from_list(test)
        for seed in seeds:
            r = run(args.side, train_set, test_set, seed, work / f"{data}_seed{seed}", 12 if args.quick else None)
            results[(data, seed)] = r
            print(f"{data} seed {seed}: kept step {r['kept']['step']} (test {r['kept']['test']:.3f}), highest "
                  f"held-out step {r['highest_held_out']['step']} ({r['highest_held_out']['test']:.3f}), last step "
                  f"{r['last']['step']} ({r['last']['test']:.3f})", flush=True)
    report = render_report(results, sizes, args.side, started, where)
    write_report(report, args.out, args.quick, RESULTS, work)


if __name__ == "__main__":
    main()

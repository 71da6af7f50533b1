"""Which evaluated step a reward run should keep: step rules judged on validation splits of the training pairs.

    .venv/bin/python bench/reward_step_rules.py           # 3 candidates x 2 datasets x 2 splits (about 80 min)
    .venv/bin/python bench/reward_step_rules.py --quick   # a smoke run: 200 pairs, 30 s budgets, one split
    .venv/bin/python bench/reward_step_rules.py --from-json bench/results/reward_step_rules.json   # rules only

A reward run evaluates its own held-out pairs (10% of what it trains on) several times and keeps one of those
steps; `reward.train.keeps_latest` decides which. Whether a rule chose well can only be told on pairs the run
never saw. So here, as in bench/reward_select.py, each run fits on 70% of bench/reward.py's training pairs, and
every step it evaluated is also scored on the other 30% (the validation pairs; the test pairs are never read).
Each rule below then picks a step from the run's own held-out evaluations, exactly as it would in training, and is
judged by that step's validation accuracy. The per-step outcomes go to a JSON file beside the report, with each
held-out pair's prompt, so a new rule can be judged on the same runs without training again (`--from-json`). Files
written before the held-out outcomes came in row order (before 2026-12-05's prompt-grouped test) have their outcomes
in the order the evaluation read the pairs, and no prompts; `--from-json` names each outcome's prompt by drawing
that order again (`prompts_in_recorded_order`: the held-out split and the length-grouped order were both seeded).
The three files in bench/results/ carry prompts drawn that way on 2026-12-05, under the runs' Transformers 5.25.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import command, machine, write_report  # noqa: E402
from bench.reward import PREFLOOP_SIDES, TRAINING_PAIRS  # noqa: E402
from bench.reward_select import checked_runs, validation_splits  # noqa: E402
from bench.reward_steps import scores_at_each_evaluation  # noqa: E402
from reward.train import better_on_same_pairs, keeps_latest  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reward_step_rules.md"
DEFAULT_CANDIDATES = "prefloop,prefloop-top2-5-epochs,prefloop-top1-5-epochs"


# ------------------------------------------------------------------------------------------- rules
# Each rule takes the run's held-out evaluations ({"step", "accuracy", "loss", "correct"}, in order) and each
# held-out pair's prompt (None: every pair its own), and returns the index of the step it keeps. A rule must be
# computable as the evaluations arrive: only the kept step's weights are in memory during training.
Rule = Callable[[list[dict], list | None], int]


def online(replaces: Callable[[list[dict], list | None], bool]) -> Rule:
    """The rule that keeps the latest evaluation whenever `replaces(evaluations so far, prompts)` says so."""
    def rule(evaluations: list[dict], prompts: list | None) -> int:
        kept = 0
        for i in range(1, len(evaluations)):
            if replaces(evaluations[: i + 1], prompts):
                kept = i
        return kept
    return rule


def highest(evaluations: list[dict], prompts: list | None = None) -> int:
    """Highest held-out accuracy, the latest of ties."""
    best = max(e["accuracy"] for e in evaluations)
    return max(i for i, e in enumerate(evaluations) if e["accuracy"] == best)


def lowest_loss(evaluations: list[dict], prompts: list | None = None) -> int:
    return min(range(len(evaluations)), key=lambda i: (evaluations[i]["loss"], -i))


def not_beaten_by_kept(alpha: float) -> Rule:
    """The latest step replaces the kept one unless the kept one ranks significantly more of the same held-out
    pairs right (one test a step, against the step kept so far, not against every earlier one)."""
    def rule(evaluations: list[dict], prompts: list | None) -> int:
        kept = 0
        for i in range(1, len(evaluations)):
            if not better_on_same_pairs(evaluations[kept]["correct"], evaluations[i]["correct"], alpha, prompts):
                kept = i
        return kept
    return rule


def smoothed(evaluations: list[dict], prompts: list | None = None) -> int:
    """Highest mean held-out accuracy over a step and the one before it (the latest of ties)."""
    if len(evaluations) == 1:
        return 0
    means = [(evaluations[i - 1]["accuracy"] + evaluations[i]["accuracy"]) / 2 for i in range(1, len(evaluations))]
    best = max(means)
    return 1 + max(i for i, m in enumerate(means) if m == best)


RULES: dict[str, tuple[str, Rule]] = {
    "current": ("keeps_latest, the rule in reward.train: the latest unless an earlier step ranks significantly "
                "more held-out pairs right (an exact test taking a prompt's pairs together, alpha 0.05 / earlier "
                "evaluations)", online(lambda evaluations, prompts: keeps_latest(evaluations, prompts=prompts))),
    "latest": ("the last evaluated step, always", lambda evaluations, prompts: len(evaluations) - 1),
    "highest": ("the highest held-out accuracy (the latest of ties)", highest),
    "lowest-loss": ("the lowest held-out loss", lowest_loss),
    "smoothed": ("the highest mean held-out accuracy over two consecutive evaluations", smoothed),
    "uncorrected": ("keeps_latest at alpha 0.05 with no Bonferroni correction",
                    online(lambda evaluations, prompts: keeps_latest(evaluations, 0.05 * (len(evaluations) - 1),
                                                                     prompts))),
    "vs-kept-0.05": ("the latest unless the step kept so far ranks significantly more right (alpha 0.05)",
                     not_beaten_by_kept(0.05)),
    "vs-kept-0.2": ("the same at alpha 0.2", not_beaten_by_kept(0.2)),
}


# ------------------------------------------------------------------------------------------- runs


def run_candidate(name: str, fit, validation, out_dir: Path, budget_s: float | None) -> dict[str, Any]:
    """Train one candidate with every held-out evaluation's model also scored on the validation pairs
    (bench/reward_steps.py's callback); the held-out evaluations, each with its step's validation accuracy."""
    from reward.train import train_reward_model

    config = PREFLOOP_SIDES[name].config(fit, str(out_dir / "model"), budget_s)
    scores = scores_at_each_evaluation(validation, out_dir, config.max_length, config.truncation_side)
    config.callbacks = [scores]
    result = train_reward_model(config)
    evaluations = [{**e, "validation_accuracy": scores.by_step[e["step"]]} for e in result.evaluations]
    return {"best_step": result.best_step, "pairs_per_second": result.pairs_per_second,
            "train_seconds": result.train_seconds, "evaluations": evaluations,
            "held_out_prompts": result.held_out_prompts}


def prompts_in_recorded_order(run: dict[str, Any]) -> list[int]:
    """The prompt of each held-out outcome of a run recorded before outcomes came in row order: the run's held-out
    rows (its split of its validation split's fit, both seeded) in the order the evaluation read them, which was
    Transformers' length-grouped sampler drawn with the run's seed."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from reward.data import Encoder, load_preferences, prompt_of_rows
    from collect.offline_models import resolve_model
    from reward.models import load_tokenizer
    from reward.train import split_by_prompt

    fit, _ = validation_splits(TRAINING_PAIRS[run["data"]](), range(run["split"], run["split"] + 1))[0]
    config = PREFLOOP_SIDES[run["candidate"]].config(fit, "unused", None)
    rows = load_preferences(config.data, "data", config.use_margin)
    _, held_out = split_by_prompt(rows, config.eval_fraction, config.seed)
    encoder = Encoder(load_tokenizer(resolve_model(config.base_model)), config.max_length, config.truncation_side)
    lengths = encoder.encode_pairs(held_out, config.use_margin, "eval_data", align=False)[0]["length"]
    order = LengthGroupedSampler(config.eval_batch_size, lengths=list(lengths),
                                 generator=torch.Generator().manual_seed(config.seed))
    prompt_of = prompt_of_rows(held_out)
    return [prompt_of[row] for row in order]


# ------------------------------------------------------------------------------------------- report


def render_report(runs: list[dict], header: list[str]) -> str:
    """Per rule: the mean validation accuracy of the steps it keeps, by dataset and candidate, and its paired
    difference from the current rule; then each run's steps."""
    groups = list(dict.fromkeys((r["data"], r["candidate"]) for r in runs))
    picked = {(id(r), rule): fn(r["evaluations"], r.get("held_out_prompts")) for r in runs
              for rule, (_, fn) in RULES.items()}

    def mean_accuracy(rule: str, subset: list[dict]) -> float:
        return statistics.mean(r["evaluations"][picked[(id(r), rule)]]["validation_accuracy"] for r in subset)

    lines = header + [
        "",
        "Mean validation accuracy of the step each rule keeps (in brackets: the paired difference from `current`, "
        "in points). `best possible` is the step with the highest validation accuracy, which no rule can know.",
        "",
        "| rule | " + " | ".join(f"{d}, {c}" for d, c in groups) + " | all runs |",
        "|---|" + "---|" * (len(groups) + 1),
    ]
    for rule in RULES:
        cells = []
        for subset in [[r for r in runs if (r["data"], r["candidate"]) == g] for g in groups] + [runs]:
            acc, ref = mean_accuracy(rule, subset), mean_accuracy("current", subset)
            cells.append(f"{acc:.3f}" + ("" if rule == "current" else f" ({100 * (acc - ref):+.1f})"))
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    best = [statistics.mean(max(e["validation_accuracy"] for e in r["evaluations"])
                            for r in runs if (r["data"], r["candidate"]) == g) for g in groups]
    overall = statistics.mean(max(e["validation_accuracy"] for e in r["evaluations"]) for r in runs)
    lines.append("| best possible | " + " | ".join(f"{b:.3f}" for b in best) + f" | {overall:.3f} |")
    lines += ["", "Rules:", ""] + [f"- `{rule}`: {text}" for rule, (text, _) in RULES.items()]
    lines += ["", "Each run: held-out accuracy / validation accuracy at every evaluated step (the step `current` kept "
              "in bold).", ""]
    for r in runs:
        kept = picked[(id(r), "current")]
        steps = ", ".join(("**{}: {:.3f} / {:.3f}**" if i == kept else "{}: {:.3f} / {:.3f}").format(
            e["step"], e["accuracy"], e["validation_accuracy"]) for i, e in enumerate(r["evaluations"]))
        lines.append(f"- {r['data']} split {r['split']}, {r['candidate']} ({len(r['evaluations'][0]['correct'])} held "
                     f"out, {r['n_validation']} validation): {steps}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="hh,summarize")
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                        help="comma-separated subset of " + ", ".join(PREFLOOP_SIDES))
    parser.add_argument("--splits", type=int, default=2, help="validation splits per dataset")
    parser.add_argument("--first-split", type=int, default=0, help="the first split's number (seed 100 + it): "
                        "splits never used before, to confirm a rule chosen on others")
    parser.add_argument("--budget-s", type=float, default=None, help="training wall-clock budget per run (default: "
                        "none, as in bench/reward_steps.py: scoring every step would eat it)")
    parser.add_argument("--quick", action="store_true", help="200 pairs, 30 s budgets, one split: a smoke run")
    parser.add_argument("--from-json", default=None, help="judge the rules on the runs recorded in this JSON file "
                        "(what a full run writes beside its report) instead of training")
    parser.add_argument("--work-dir", default=None, help="where the models go (default: a temp dir)")
    parser.add_argument("--out", default=None, help="the Markdown results file (default: "
                        "bench/results/reward_step_rules.md; a --quick run writes into its work folder)")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="prefloop-bench-reward-step-rules-"))
    if args.from_json:
        recorded = json.loads(Path(args.from_json).read_text())
        header = recorded["header"] + [
            f"- Rules judged again on these runs on {datetime.date.today()} by `{command()}`"]
        if any("held_out_prompts" not in run for run in recorded["runs"]):
            header[-1] += (", each held-out outcome's prompt named by drawing the recorded evaluation order again "
                           "(`prompts_in_recorded_order`)")
        for run in recorded["runs"]:
            if "held_out_prompts" not in run:
                run["held_out_prompts"] = prompts_in_recorded_order(run)
                if len(run["held_out_prompts"]) != len(run["evaluations"][0]["correct"]):
                    raise SystemExit(f"{run['data']} split {run['split']} {run['candidate']}: the held-out pairs "
                                     "drawn again are not the recorded ones")
        report = render_report(recorded["runs"], header)
        write_report(report, args.out, args.quick, RESULTS, work)
        return
    names = checked_runs(parser, args)
    started = datetime.datetime.now().astimezone()
    header = [
        "# Which evaluated step to keep: step rules judged on validation splits of the training pairs",
        "",
        f"- Command: `{command()}`",
        f"- Machine: {machine()}",
        f"- Started {started:%Y-%m-%d %H:%M %Z}",
        "- Data: bench/reward.py's training pairs only; each split fits on 70% and validates on 30%, whole prompts "
        "on one side (bench/reward_select.py's splits); each run holds 10% of its 70% out for its own evaluations. "
        "Candidates: " + ", ".join(f"`{n}` ({PREFLOOP_SIDES[n].exactly()})" for n in names) + "; seed 0.",
    ]
    runs: list[dict] = []
    for data in args.datasets.split(","):
        rows = TRAINING_PAIRS[data]()[: 200 if args.quick else None]
        splits = range(args.first_split, args.first_split + args.splits)
        for k, (fit, validation) in zip(splits, validation_splits(rows, splits)):
            for name in names:
                t0 = time.monotonic()
                run = run_candidate(name, fit, validation, work / f"{data}_{name}_split{k}", args.budget_s)
                runs.append({"data": data, "split": k, "candidate": name, "n_validation": len(validation), **run})
                print(f"{data} split {k} {name}: {len(run['evaluations'])} steps, validation accuracy "
                      + ", ".join(f"{e['validation_accuracy']:.3f}" for e in run["evaluations"])
                      + f" ({time.monotonic() - t0:.0f} s)", flush=True)
    minutes = (datetime.datetime.now().astimezone() - started).total_seconds() / 60
    header[4] += f", took {minutes:.0f} min"
    path = write_report(render_report(runs, header), args.out, args.quick, RESULTS, work)
    path.with_suffix(".json").write_text(json.dumps({"header": header, "runs": runs}) + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: prefloop's reward recipe versus plain TRL defaults, same backbone, pairs and time budget.

    .venv/bin/python bench/reward.py              # the issue's sides (about 80 min on 2 CPU cores)
    .venv/bin/python bench/reward.py --quick      # a smoke run: small splits, 60 s budgets
    .venv/bin/python bench/reward.py --seeds 0,1,2 --sides trl-defaults,prefloop,prefloop-top1 \
        --out bench/results/reward_seeds.md      # each side once per seed; targets judged on the means

Data (../shared/data, imported with collect.formats):
- HH-RLHF harmless-base test file: a seeded shuffle, 1,800 pairs to train on, the other 512 to test;
- summarize-from-feedback batch 13: split by post id (seeded), so no post is on both sides.

Sides, each in its own subprocess (so peak memory is its own), one after the other; a plain run runs
MAIN_SIDES (TRL's defaults, `prefloop`, `prefloop-top1`, `prefloop-smollm2-lora`, `prefloop-smollm2-20-evals2`),
the others vary one setting and run when named in --sides:
1. `trl-defaults`: `trl.RewardTrainer` with its default `RewardConfig`, setting only output_dir,
   max_length and the batch size, as a new user would; plus eos_token="[SEP]", without which TRL
   cannot train a BERT model at all (BERT tokenizers have no EOS), and use_cpu=True, without which
   RewardConfig refuses its own bf16 default on a machine with no GPU. The pairs are given as plain text
   in the same `User:` / `Assistant:` layout prefloop renders for encoders, so both see the same text.
2. `prefloop`: `reward.train.train_reward_model` with its defaults (only data, base and output set);
   `prefloop-top1` the same with trainable_layers=1 and evals_per_epoch=2 (the speed end of the recipe: the
   embeddings and the lower 5 of MiniLM's 6 layers frozen, so the backward pass covers one layer and, from the
   second epoch on, the frozen layers' kept output stands in for them (FrozenLayerCache); at the 2e-4 learning
   rate that trainable_layers defaults to; 2 evaluations an epoch were chosen before the cache, when 4 cost
   about a third of the training time, and are kept so runs compare). `prefloop-top1-5-epochs` the same for 5
   epochs; `prefloop-top2-5-epochs` the top 2 layers for 5 epochs, the candidate that matched the default's
   accuracy on validation splits of the training pairs (bench/reward_select.py) at about 3x its pairs per
   second. `prefloop-all-pairs`: the defaults with eval_fraction=0 (every training pair trained on, the last
   step kept). `prefloop-trl-schedule`: the defaults at TRL's schedule, 3 epochs at lr 1e-4.
3. `prefloop-smollm2-lora`: the same recipe on the `smollm2-135m-instruct` decoder with `lora=True`;
   `prefloop-smollm2-20-evals2` the decoder cut to its bottom 20 of 30 layers (backbone_layers=20), the top 2
   of those and the head trained in full (trainable_layers=2), the 18 frozen layers run once per sequence
   (FrozenLayerCache), with evals_per_epoch=2 (before the cache, a held-out evaluation of 180 pairs cost about
   as much as training on 150, and a run with 4 an epoch got 1.5 of its 2 epochs done). Why 20: linear probes
   of each layer's last-token state (and mean-pooled state), fitted with 5-fold cross-validation on the HH
   training pairs, peaked at layers 18-22 (0.64-0.67 in cross-validation), above layers 10 and 15 and the last layer (0.62-0.65).
   `prefloop-smollm2-20-two-sequences` the same cut with share_prompt=False: chosen and rejected as two
   sequences, the prompt run twice (the other decoder sides run each pair as one sequence, its prompt once).
   `prefloop-smollm2-20-all-pairs` the same cut trained on every training pair (eval_fraction=0: none held
   out, so no step is chosen and the last is kept); with 1,800 pairs the 180 held out cost a tenth of the data
   and pick the step by an accuracy whose standard error is about 3.6 points.

Every side trains under the same wall-clock budget (`--budget-s`, default 600 s: training stops when
it is spent) on the same training pairs, and is then scored on the same test pairs with
reward.evaluate (accuracy with a 95% bootstrap interval). Pairs per second = training pairs processed
/ training wall time (evaluation during training included). Peak memory = the subprocess's max RSS.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import chosen, machine, peak_rss_gb, write_report  # noqa: E402  (one description of the machine)
DATA = ROOT.parent / "shared" / "data"
HH_FILE = DATA / "hh_harmless_base_test.jsonl.gz"
SUMMARIZE_FILE = DATA / "summarize_feedback_batch13.jsonl"
RESULTS = ROOT / "bench" / "results" / "reward.md"
TRL_MAX_LENGTH = 256
"""The max_length TRL's side sets (it drops longer pairs), and the length its model is scored at."""


# ------------------------------------------------------------------------------------------- data


def records_to_preferences(records) -> list[dict]:
    """collect.formats records -> TRL conversational preference rows (the exporter's margin scale:
    A>B = 0.5, A>>B = 1.0). Ties carry no preference and are skipped."""
    rows = []
    for r in records:
        choice = sum(j.choice for j in r.judgments)
        if choice == 0:
            continue
        a_wins = choice > 0
        rows.append({
            "prompt": r.prompt,
            "chosen": [{"role": "assistant", "content": r.response_a if a_wins else r.response_b}],
            "rejected": [{"role": "assistant", "content": r.response_b if a_wins else r.response_a}],
            "margin": min(1.0, abs(choice) / 2),
            "source": r.source,
            "prompt_id": r.prompt_id or "",
        })
    return rows


def hh_split(n_train: int = 1800, seed: int = 0) -> tuple[list[dict], list[dict]]:
    from collect.formats import read_records

    rows = records_to_preferences(read_records(HH_FILE, "hh-rlhf"))
    random.Random(seed).shuffle(rows)
    return rows[:n_train], rows[n_train:]


def summarize_split(test_share: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    from collect.formats import read_records

    rows = records_to_preferences(read_records(SUMMARIZE_FILE, "summarize"))
    posts = sorted({r["prompt_id"] for r in rows})
    random.Random(seed).shuffle(posts)
    test_posts = set(posts[: round(test_share * len(posts))])
    return [r for r in rows if r["prompt_id"] not in test_posts], [r for r in rows if r["prompt_id"] in test_posts]


# The training pairs of each dataset, for benchmarks that never read the test pairs.
TRAINING_PAIRS = {"hh": lambda: hh_split()[0], "summarize": lambda: summarize_split()[0]}


def summarize_split_check(train: list[dict], test: list[dict]) -> None:
    overlap = {r["prompt_id"] for r in train} & {r["prompt_id"] for r in test}
    assert not overlap, f"posts on both sides of the summarize split: {sorted(overlap)[:3]}"


def train_test_splits(names: list[str], quick: bool) -> dict[str, tuple[list[dict], list[dict]]]:
    """(train, test) pairs of each named dataset; `quick`: small ones for a smoke run."""
    splits = {}
    if "hh" in names:
        train, test = hh_split(n_train=300 if quick else 1800)
        splits["hh"] = (train, test[:150]) if quick else (train, test)
    if "summarize" in names:
        train, test = summarize_split()
        summarize_split_check(train, test)
        splits["summarize"] = (train[:200], test[:100]) if quick else (train, test)
    return splits


def as_plain_text(rows: list[dict], tokenizer) -> list[dict]:
    """The same pairs as whole-dialogue strings (TRL's implicit-prompt standard format), in the very
    layout prefloop renders for a tokenizer without a chat template."""
    from reward.data import pair_conversations, render

    out = []
    for row in rows:
        chosen, rejected = pair_conversations(row)
        out.append({"chosen": render(tokenizer, chosen)[0], "rejected": render(tokenizer, rejected)[0]})
    return out


# ----------------------------------------------------------------------------------------- workers


def _time_budget_callback(seconds: float):
    """Stops training once `seconds` have passed since it began; `trained_seconds` is the time from its start to
    the end of its last step: training, not the checkpoint TRL's default `save_strategy` writes after that step
    (prefloop saves none while training)."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()
            self.trained_seconds = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            self.trained_seconds = time.monotonic() - self.start
            if self.trained_seconds > seconds:
                control.should_training_stop = True

    return TimeBudget()


def worker_trl_defaults(train_path: str, out_dir: str, budget_s: float, batch_size: int, seed: int = 42) -> dict:
    """Plain TRL: default RewardConfig, only output_dir, max_length and the batch size (+ eos for BERT); `seed`
    is RewardConfig's own default (42) unless the bench is run over several seeds."""
    import datasets
    import torch
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from collect.offline_models import resolve_model

    base = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = as_plain_text(datasets.load_dataset("parquet", data_files=train_path, split="train").to_list(), tokenizer)
    train = datasets.Dataset.from_list(rows)
    args = RewardConfig(
        output_dir=out_dir,
        max_length=TRL_MAX_LENGTH,
        per_device_train_batch_size=batch_size,
        eos_token="[SEP]",  # BERT has no EOS; without it TRL fails on plain-text pairs
        # Without it RewardConfig stops on a CPU machine ("You need to assign use_cpu"); on a GPU a new user sets nothing.
        use_cpu=not torch.cuda.is_available(),
        report_to="none",  # no experiment trackers (no network here); does not change training
        seed=seed,
    )
    budget = _time_budget_callback(budget_s)
    trainer = RewardTrainer(model=base, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[budget])
    kept = len(trainer.train_dataset)
    tokens_per_pair = sum(len(c) + len(r) for c, r in zip(trainer.train_dataset["chosen_ids"],
                                                          trainer.train_dataset["rejected_ids"])) / kept
    trainer.train()
    seconds = budget.trained_seconds
    trainer.save_model(out_dir)
    steps_per_epoch = -(-kept // batch_size)
    full, rest = divmod(trainer.state.global_step, steps_per_epoch)
    pairs = full * kept + min(rest * batch_size, kept)
    return {"pairs_total": len(train), "pairs_used": kept, "pairs_dropped": len(train) - kept, "pairs_truncated": 0,
            "pairs_seen": pairs, "train_seconds": seconds, "pairs_per_second": pairs / seconds,
            "tokens_per_pair": tokens_per_pair, "tokens_per_second": tokens_per_pair * pairs / seconds,
            "precision": "bf16" if args.bf16 else "fp32", "checkpointing": bool(args.gradient_checkpointing),
            "epochs_done": trainer.state.epoch}


def worker_prefloop(side: PrefloopSide, train_path: str, out_dir: str, budget_s: float, seed: int) -> dict:
    """prefloop's recipe: train_reward_model with its defaults; only data, base, output, budget (and LoRA), plus
    the side's changes for the variants."""
    from reward.train import train_reward_model

    result = train_reward_model(side.config(train_path, out_dir, budget_s, seed=seed))
    info = json.loads((Path(out_dir) / "prefloop.json").read_text())
    return {"pairs_total": result.n_train + result.n_eval, "pairs_used": result.n_train,
            "pairs_dropped": 0, "pairs_truncated": result.truncated_train, "held_out": result.n_eval,
            "pairs_seen": round(result.pairs_per_second * result.train_seconds),
            "train_seconds": result.train_seconds, "pairs_per_second": result.pairs_per_second,
            "tokens_per_pair": result.tokens_per_pair,
            "tokens_per_second": result.tokens_per_pair * result.pairs_per_second, "precision": info["precision"],
            "checkpointing": False, "best_step": result.best_step,
            "last_step": max((h.get("step", 0) for h in result.history), default=0),
            "held_out_accuracy": result.metrics.get("eval_accuracy"),
            "epochs_done": max((h.get("epoch", 0) for h in result.history), default=0)}


def run_worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result", required=True)
    a = parser.parse_args(argv)
    import torch

    if a.side == "trl-defaults":
        stats = worker_trl_defaults(a.train, a.out, a.budget_s, a.batch_size, seed=42 + a.seed)
    elif a.side in PREFLOOP_SIDES:
        stats = worker_prefloop(PREFLOOP_SIDES[a.side], a.train, a.out, a.budget_s, a.seed)
    else:
        raise SystemExit(f"unknown side {a.side}")
    from reward.data import load_rows
    from reward.evaluate import evaluate_reward_model
    from reward.score import RewardScorer

    # Both sides are scored by the same evaluator on every test pair, each cut from the left to the length it
    # trained with: the saved max length, and for the TRL model, which saves none, its RewardConfig's.
    max_length = TRL_MAX_LENGTH if a.side == "trl-defaults" else None
    report = evaluate_reward_model(a.out, a.test, n_bootstrap=2000, max_length=max_length)
    stats.update({"test_pairs": report["n"], "test_accuracy": report["accuracy"], "test_ci": report["ci"],
                  "test_ece": report["calibration"]["ece"],
                  "peak_rss_gb": peak_rss_gb(),
                  "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None})
    # Each test pair's outcome, so the report can compare two sides pair by pair (paired_comparison); scored
    # again as the evaluation scored them, after the peak memory is read.
    scorer = RewardScorer(a.out, max_length=max_length)
    chosen, rejected = scorer.score_pairs(load_rows(a.test, "data", split="test")[0])
    stats["test_correct"] = (chosen.mean > rejected.mean).tolist()
    if sum(stats["test_correct"]) != round(report["accuracy"] * report["n"]):
        raise SystemExit(f"{a.side}: scoring the test pairs again gave another accuracy than the evaluation")
    Path(a.result).write_text(json.dumps(stats, indent=2))


# --------------------------------------------------------------------------------------------- main

class PrefloopSide(NamedTuple):
    """One prefloop recipe the bench runs: prefloop's defaults plus `changes`."""

    description: str
    base: str
    lora: bool
    changes: dict
    """The RewardTrainingConfig fields changed from the defaults."""

    def config(self, data, output_dir: str, time_budget_s: float, **run):
        """The RewardTrainingConfig that trains this recipe on `data` (`run`: per-run fields such as the seed)."""
        from reward.train import RewardTrainingConfig

        return RewardTrainingConfig(data=data, base_model=self.base, lora=self.lora, output_dir=output_dir,
                                    time_budget_s=time_budget_s, progress=False, **self.changes, **run)

    def exactly(self) -> str:
        """Base model, LoRA and the changed fields, as the reports list them."""
        return f"{self.base}{', LoRA' if self.lora else ''}, changes from the defaults `{self.changes or 'none'}`"


# One definition of each prefloop recipe: the worker trains it, the report describes it, and
# bench/reward_select.py compares them by validation.
PREFLOOP_SIDES: dict[str, PrefloopSide] = {
    "prefloop": PrefloopSide("prefloop recipe (minilm-l6)", "minilm-l6", False, {}),
    "prefloop-top1": PrefloopSide(
        "prefloop recipe, top layer trained, 2 evaluations per epoch (minilm-l6)", "minilm-l6", False,
        {"trainable_layers": 1, "evals_per_epoch": 2}),
    "prefloop-top1-5-epochs": PrefloopSide(
        "prefloop recipe, top layer trained, 5 epochs, 2 evaluations per epoch (minilm-l6)", "minilm-l6", False,
        {"trainable_layers": 1, "evals_per_epoch": 2, "num_train_epochs": 5}),
    "prefloop-top2-5-epochs": PrefloopSide(
        "prefloop recipe, top 2 layers trained, 5 epochs, 2 evaluations per epoch (minilm-l6)", "minilm-l6", False,
        {"trainable_layers": 2, "evals_per_epoch": 2, "num_train_epochs": 5}),
    "prefloop-trl-schedule": PrefloopSide(
        "prefloop recipe at TRL's schedule, 3 epochs at lr 1e-4 (minilm-l6)", "minilm-l6", False,
        {"learning_rate": 1e-4, "num_train_epochs": 3}),
    "prefloop-all-pairs": PrefloopSide(
        "prefloop recipe, every training pair trained on (none held out), the last step kept (minilm-l6)",
        "minilm-l6", False, {"eval_fraction": 0.0}),
    "prefloop-no-margin": PrefloopSide(
        "prefloop recipe, the margin column left out of the loss (minilm-l6)", "minilm-l6", False,
        {"use_margin": False}),
    "prefloop-each-alone": PrefloopSide(
        "prefloop recipe, each side of an over-long training pair cut alone (minilm-l6)", "minilm-l6", False,
        {"align_truncation": False}),
    "prefloop-smollm2-lora": PrefloopSide(
        "prefloop recipe, smollm2-135m-instruct + LoRA", "smollm2-135m-instruct", True, {}),
    "prefloop-smollm2-20-evals2": PrefloopSide(
        "prefloop recipe, smollm2-135m-instruct, bottom 20 of 30 layers, top 2 trained, 2 evaluations per epoch",
        "smollm2-135m-instruct", False,
        {"backbone_layers": 20, "trainable_layers": 2, "learning_rate": 5e-5, "evals_per_epoch": 2}),
    "prefloop-smollm2-20-two-sequences": PrefloopSide(
        "prefloop recipe, smollm2-135m-instruct, bottom 20 of 30 layers, top 2 trained, 2 evaluations per epoch, "
        "chosen and rejected as two sequences (the prompt run twice)", "smollm2-135m-instruct", False,
        {"backbone_layers": 20, "trainable_layers": 2, "learning_rate": 5e-5, "evals_per_epoch": 2,
         "share_prompt": False}),
    "prefloop-smollm2-20-each-alone": PrefloopSide(
        "prefloop recipe, smollm2-135m-instruct, bottom 20 of 30 layers, top 2 trained, 2 evaluations per epoch, "
        "each side of an over-long training pair cut alone", "smollm2-135m-instruct", False,
        {"backbone_layers": 20, "trainable_layers": 2, "learning_rate": 5e-5, "evals_per_epoch": 2,
         "align_truncation": False}),
    "prefloop-smollm2-20-all-pairs": PrefloopSide(
        "prefloop recipe, smollm2-135m-instruct, bottom 20 of 30 layers, top 2 trained, every training pair trained "
        "on (none held out), the last step kept", "smollm2-135m-instruct", False,
        {"backbone_layers": 20, "trainable_layers": 2, "learning_rate": 5e-5, "eval_fraction": 0.0}),
}
TRL_BACKBONE_SIDES = [name for name, side in PREFLOOP_SIDES.items() if side.base == "minilm-l6"]
SIDES = {"trl-defaults": "plain TRL defaults (minilm-l6)",
         **{name: side.description for name, side in PREFLOOP_SIDES.items()}}
# What a plain run compares: TRL's defaults, the default recipe, its speed end, and the smollm2 reward model
# as LoRA and as the cut that reaches 0.66 on HH. The other sides vary one setting and run by --sides.
MAIN_SIDES = ["trl-defaults", "prefloop", "prefloop-top1", "prefloop-smollm2-lora", "prefloop-smollm2-20-evals2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock budget per side")
    parser.add_argument("--quick", action="store_true", help="small splits and 60 s budgets: a smoke run")
    parser.add_argument("--sides", default=",".join(MAIN_SIDES),
                        help="comma-separated subset of " + ", ".join(SIDES) + " (default: " + ",".join(MAIN_SIDES) + ")")
    parser.add_argument("--datasets", default="hh,summarize")
    parser.add_argument("--batch-size", type=int, default=16, help="the TRL side's per-device batch size")
    parser.add_argument("--seeds", type=seed_list, default=[0],
                        help="comma-separated seeds; each side runs once per seed (prefloop's seed S; TRL's seed 42+S, "
                        "its default for S=0) and the targets are judged on the means")
    parser.add_argument("--work-dir", default=None, help="where models and splits go (default: a temp dir)")
    parser.add_argument("--out", default=None, help="the Markdown results file (default: bench/results/reward.md; "
                        "a --quick run writes into its work folder)")
    args = parser.parse_args()
    chosen(parser, "--sides", args.sides, SIDES)
    chosen(parser, "--datasets", args.datasets, TRAINING_PAIRS)
    if args.quick and args.budget_s == 600.0:
        args.budget_s = 60.0
    import tempfile

    import datasets

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="prefloop-bench-reward-"))
    work.mkdir(parents=True, exist_ok=True)
    splits = train_test_splits(args.datasets.split(","), args.quick)
    command = "python bench/reward.py " + " ".join(sys.argv[1:])
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    where = machine()
    seeds = args.seeds
    results: dict[tuple[str, str, int], dict] = {}
    for name, (train, test) in splits.items():
        paths = {}
        for part, rows in (("train", train), ("test", test)):
            paths[part] = str(work / f"{name}_{part}.parquet")
            datasets.Dataset.from_list(rows).to_parquet(paths[part])
        for seed, side in ((seed, side) for seed in seeds for side in args.sides.split(",")):
            run = f"{name}_{side}" + (f"_seed{seed}" if seed else "")
            result_path = work / f"{run}.json"
            cmd = [sys.executable, __file__, "--worker", "--side", side, "--train", paths["train"], "--test",
                   paths["test"], "--out", str(work / run), "--budget-s", str(args.budget_s),
                   "--batch-size", str(args.batch_size), "--seed", str(seed), "--result", str(result_path)]
            print(f"== {name}: {SIDES[side]}, seed {seed} ({len(train)} train / {len(test)} test pairs, "
                  f"budget {args.budget_s:.0f} s)", flush=True)
            t0 = time.monotonic()
            load0 = os.getloadavg()[0]
            subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
            results[(name, side, seed)] = json.loads(result_path.read_text()) | {
                "wall_seconds": time.monotonic() - t0, "load_before": load0, "load_after": os.getloadavg()[0]}
            r = results[(name, side, seed)]
            print(f"   test accuracy {r['test_accuracy']:.3f} [{r['test_ci'][0]:.3f}, {r['test_ci'][1]:.3f}], "
                  f"{r['pairs_per_second']:.2f} pairs/s, peak RSS {r['peak_rss_gb']:.2f} GiB", flush=True)
    report = render_report(results, splits, args, command, started, load_before, where)
    from bench.reward_by_comparison import DESCRIPTION, by_comparison_section

    this_run = {(side, seed) for _, side, seed in results}  # not other runs' files in a --work-dir used before
    report += "\n".join(["", "## Per distinct comparison", "", DESCRIPTION, "",
                         *by_comparison_section(work, heading="###", runs=this_run)])
    write_report(report, args.out, args.quick, RESULTS, work)


def short_float(x: float) -> str:
    """5e-5, not Python's 5e-05."""
    return f"{x:.0e}".replace("e-0", "e-")


def recipe() -> str:
    """prefloop's defaults, read from the config so this text cannot drift from the code."""
    import torch

    from reward.train import RewardTrainingConfig, _precision

    c = RewardTrainingConfig(data=None)
    where = "the GPU" if torch.cuda.is_available() else "this machine's CPU"
    return (f"{_precision(c.precision)} on {where} (auto: bf16 on a GPU that has it, else fp16; on a CPU bf16 "
            "where it has bf16 matrix units), no "
            f"gradient checkpointing, left truncation to {c.max_length} tokens (nothing dropped"
            f"{', the two sides of a training pair cut alike' if c.align_truncation else ''}), "
            f"length-grouped batches of {c.batch_size} pairs, {c.num_train_epochs:g} epochs at lr {short_float(c.peak_learning_rate())} "
            f"({c.lr_scheduler_type}, {c.warmup_ratio:.0%} warm-up), margin in the loss, reward centering "
            f"{c.center_rewards_coefficient}, {c.eval_fraction:.0%} of the training pairs held out by prompt and "
            f"evaluated {c.evals_per_epoch}x per epoch, the latest evaluated step kept unless an earlier one ranks "
            "significantly more of the same held-out pairs right (`reward.train.keeps_latest`)")


def peak_memory(r: dict) -> str:
    """"1.23 GiB", or "1.23 GiB (GPU 0.45 GiB)" for a side that ran on a GPU."""
    gpu = r.get("peak_gpu_gb")
    return f"{r['peak_rss_gb']:.2f} GiB" + (f" (GPU {gpu:.2f} GiB)" if gpu is not None else "")


def kept_step(r: dict) -> str:
    """"12 of 100" for a side that chose a step on held-out pairs; "last" for one that keeps the last."""
    if r.get("best_step") is None:
        return "last"
    return f"{r['best_step']} of {r['last_step']}" if r.get("last_step") else str(r["best_step"])


def seed_list(text: str) -> list[int]:
    """--seeds: distinct integers, comma-separated."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed appears twice in {text!r}; each would overwrite the other's run")
    return seeds


def mean_over_seeds(results: dict[tuple[str, str, int], dict]) -> dict[tuple[str, str], dict]:
    """Per data set and side: mean test accuracy, its sample standard deviation over seeds, and mean pairs/s."""
    import statistics

    grouped: dict[tuple[str, str], list[dict]] = {}
    for (name, side, _), r in results.items():
        grouped.setdefault((name, side), []).append(r)
    return {key: {"accuracies": [r["test_accuracy"] for r in runs],
                  "accuracy": statistics.fmean(r["test_accuracy"] for r in runs),
                  "accuracy_sd": statistics.stdev(r["test_accuracy"] for r in runs) if len(runs) > 1 else 0.0,
                  "pairs_per_second": statistics.fmean(r["pairs_per_second"] for r in runs)}
            for key, runs in grouped.items()}


def paired_with_trl(results, splits) -> list[str]:
    """Each side against TRL's defaults of the same seed, pair by pair on the same test pairs
    (`reward.evaluate.paired_comparison`): the accuracy difference with its interval over prompts and the exact
    permutation test, which tell two sides apart where their own intervals overlap."""
    import datasets

    from reward.data import prompt_of_rows
    from reward.evaluate import paired_comparison

    def row(name: str, side: str, seed: str, ours: list[bool], trl: list[bool], prompts: list) -> str:
        c = paired_comparison(ours, trl, prompts, n_bootstrap=2000)
        interval = f"[{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]" if c["ci_method"] else ""
        return (f"| {name} | {SIDES[side]} | {seed} | {100 * c['difference']:+.1f} points {interval} | "
                f"{c['only_first_right']} / {c['only_second_right']} | {c['p_value']:.3g} |")

    rows = []
    pooled: dict[tuple[str, str], tuple[list, list, list, list]] = {}  # (name, side) -> ours, trl's, prompts, seeds
    for (name, side, seed), r in results.items():
        trl = results.get((name, "trl-defaults", seed))
        if side == "trl-defaults" or trl is None or "test_correct" not in r or "test_correct" not in trl:
            continue
        prompts = prompt_of_rows(datasets.Dataset.from_list(splits[name][1]))
        rows.append(row(name, side, str(seed), r["test_correct"], trl["test_correct"], prompts))
        ours, theirs, all_prompts, seeds = pooled.setdefault((name, side), ([], [], [], []))
        ours += r["test_correct"]
        theirs += trl["test_correct"]
        all_prompts += prompts
        seeds.append(seed)
    for (name, side), (ours, theirs, prompts, seeds) in pooled.items():
        if len(seeds) > 1:
            rows.append(row(name, side, "all: " + ", ".join(map(str, seeds)), ours, theirs, prompts))
    if not rows:
        return []
    return ["", "## Against plain TRL defaults, pair by pair", "",
            "The same test pairs scored by both sides: the difference in accuracy with a 95% bootstrap interval that "
            "resamples prompts (none where under 10 prompts tell the two apart), the pairs only one side ranks right, "
            "and the two-sided exact permutation test over prompts (`reward.evaluate.paired_comparison`, what "
            "`prefloop reward compare` reports). With several seeds, the last row of a side pools them: each test "
            "pair counts once per seed, and a prompt's pairs from every seed are resampled and sign-flipped together, "
            "so the seeds average out training noise while the interval and p still count the test prompts, not "
            "the runs.", "",
            "| data | side | seed | difference [95% CI] | only this side right / only TRL right | p |",
            "|---|---|---|---|---|---|", *rows]


def render_report(results, splits, args, command, started, load_before, where: str) -> str:
    from reward.train import RewardTrainingConfig

    held_out = RewardTrainingConfig(data=None).eval_fraction
    lines = [
        "# Reward models: prefloop's recipe vs plain TRL defaults",
        "",
        f"- date: {started:%Y-%m-%d %H:%M %Z}",
        f"- machine: {where}, torch {importlib.metadata.version('torch')}",
        f"- command: `{command}` (from the repository root)",
        f"- budget: {args.budget_s:.0f} s of training wall-clock per side; every side trains on the same pairs "
        "and is scored on the same test pairs by `reward.evaluate` (95% bootstrap intervals, 2,000 resamples of "
        "the prompts, a prompt's pairs together)",
        f"- load average when the run started: {load_before[0]:.1f} (other work on the machine slows every side; "
        "the per-side load is in the last column)",
        "",
        "| data | side | seed | test accuracy [95% CI] | pairs/s | tokens/s | pairs trained on | epochs | kept step | "
        "peak RSS | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, side, seed), r in results.items():
        used = f"{r['pairs_used']} of {r['pairs_total']}"
        if r["pairs_dropped"]:
            used += f" ({r['pairs_dropped']} dropped as too long)"
        if r["pairs_truncated"]:
            used += f" ({r['pairs_truncated']} truncated"
            used += f", {r['held_out']} held out for checkpoint choice)" if r.get("held_out") else ")"
        lines.append(
            f"| {name} ({len(splits[name][0])} / {r['test_pairs']}) | {SIDES[side]} | {seed} | "
            f"{r['test_accuracy']:.3f} [{r['test_ci'][0]:.3f}, {r['test_ci'][1]:.3f}] | {r['pairs_per_second']:.2f} | "
            f"{r['tokens_per_second']:.0f} | {used} | {r['epochs_done']:.2f} | {kept_step(r)} | {peak_memory(r)} | "
            f"{r['load_before']:.1f} -> {r['load_after']:.1f} |"
        )
    means = mean_over_seeds(results)
    seeds = sorted({seed for _, _, seed in results})
    over = f" (means over seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    if len(seeds) > 1:
        lines += ["", "## Mean over seeds", "",
                  "A seed changes the head's initialisation and the batch order, and for prefloop also which "
                  f"{held_out:.0%} of the training pairs are held out; the test pairs are the same for every run.", "",
                  "| data | side | test accuracy: mean (sd) | per seed | pairs/s: mean |", "|---|---|---|---|---|"]
        for (name, side), m in means.items():
            lines.append(f"| {name} | {SIDES[side]} | {m['accuracy']:.3f} ({m['accuracy_sd']:.3f}) | "
                         f"{', '.join(f'{a:.3f}' for a in m['accuracies'])} | {m['pairs_per_second']:.2f} |")
    lines += paired_with_trl(results, splits)
    lines += ["", f"## Targets (issue 5), against plain TRL defaults on the same backbone{over}", ""]
    for name in splits:
        base = means.get((name, "trl-defaults"))
        for side in TRL_BACKBONE_SIDES:
            ours = means.get((name, side))
            if not (ours and base):
                continue
            speed = ours["pairs_per_second"] / base["pairs_per_second"]
            gain = 100 * (ours["accuracy"] - base["accuracy"])
            lines.append(f"- {name}, {SIDES[side]}: {speed:.1f}x the pairs per second (target 3x: "
                         f"{'met' if speed >= 3 else 'not met'}), {gain:+.1f} points of test accuracy (target +5: "
                         f"{'met' if gain >= 5 else 'not met'})")
    best_hh = max((m["accuracy"], SIDES[side]) for (name, side), m in means.items()
                  if name == "hh" and side != "trl-defaults") if "hh" in splits else None
    if best_hh:
        lines.append(f"- HH harmless, best prefloop side within the {args.budget_s:.0f} s budget: {best_hh[0]:.3f} "
                     f"({best_hh[1]}; target 0.66: {'met' if best_hh[0] >= 0.66 else 'not met'})")
    lines += [
        "",
        "## What each side is",
        "",
        "- plain TRL defaults: `RewardTrainer(model=minilm-l6, args=RewardConfig(output_dir, max_length=256, "
        "per_device_train_batch_size=16, eos_token=\"[SEP]\", use_cpu=<no GPU>, report_to=\"none\"))`: bf16 autocast and "
        "gradient checkpointing (TRL's defaults), 3 epochs at lr 1e-4, random batches padded to their longest pair, and "
        "every pair longer than 256 tokens dropped. eos_token is needed because BERT tokenizers have no EOS, use_cpu "
        "(set only where there is no GPU) because RewardConfig refuses its own bf16 default on a machine without a "
        "GPU unless told to use the CPU.",
        "- prefloop recipe: `train_reward_model(RewardTrainingConfig(data, base_model, output_dir, time_budget_s))` "
        f"with its defaults: {recipe()}.",
        "- prefloop recipe, top layer trained: the same with `trainable_layers=1` (embeddings and the lower 5 of "
        "6 layers frozen: the backward pass stops after one layer, and the frozen layers' output for each sequence is "
        "kept from its first pass, so later epochs and evaluations run one layer), at the learning rate "
        "trainable_layers defaults to "
        f"({short_float(RewardTrainingConfig(data=None, trainable_layers=1).peak_learning_rate())}; "
        "at 5e-5 one layer barely moves in 2 epochs), and `evals_per_epoch=2` (chosen when 4 evaluations an epoch "
        "took about a third of the training time, before the frozen layers were cached; kept so runs compare).",
        "- smollm2-135m-instruct + LoRA: the recipe with `lora=True` (rank 16 on every linear layer, score head in "
        "full, lr 2e-4). Bottom 20 of 30 layers: `backbone_layers=20, trainable_layers=2, evals_per_epoch=2`: the "
        "decoder cut after layer 20 (the upper 10 are not loaded), the top 2 of the remaining layers, the final norm "
        "and the score head trained in full at lr 5e-5, the 18 frozen layers run once per sequence (their output is "
        "kept from the first pass), evaluated twice an epoch (before that cache, an evaluation of 180 pairs cost "
        "about as much as training on 150). "
        "Layer 20 because linear probes of each layer's last-token state, fitted with 5-fold cross-validation on the "
        "HH training pairs, peaked around layers 18-22.",
        "- Each prefloop side exactly: " + "; ".join(f"{name}: {PREFLOOP_SIDES[name].exactly()}" for name in
                                                    dict.fromkeys(side for _, side, _ in results)
                                                    if name in PREFLOOP_SIDES) + ".",
        "- pairs/s = training pairs processed / training wall time, from the first step to the end of the last (the "
        "held-out evaluations during training count against prefloop; the checkpoint TRL's default save_strategy "
        "writes after its last step does not count against TRL). tokens/s = the same with each pair counted as its "
        "real tokens, chosen and rejected, padding not counted: TRL trains on the pairs it keeps, the shorter ones. "
        "Peak RSS = the side's own subprocess (VmHWM); on a GPU also the peak GPU memory torch allocated.",
        f"- Scoring: every model is scored on the test pairs cut from the left to the length it trained with: "
        f"prefloop's from its prefloop.json, TRL's at its RewardConfig's max_length ({TRL_MAX_LENGTH}).",
        "- Data: `../shared/data/hh_harmless_base_test.jsonl.gz` (seeded shuffle: 1,800 train, 512 test) and "
        "`../shared/data/summarize_feedback_batch13.jsonl` (posts split 80/20 by `info.id`, seeded), imported with "
        "`collect.formats.read_records`; summarize margins come from the workers' confidence, HH margins are 0.5.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        run_worker(sys.argv[2:])
    else:
        main()

r"""Aligning a policy with PEFT: `align(AlignConfig(...))` trains a LoRA adapter and writes it to a folder.

Methods (one module each):
- `grpo`, `rloo` (finetune/rl.py): reinforcement learning against a reward model, KL to the base via `beta`;
- `dpo` (finetune/dpo.py): straight from a preference dataset, no reward model;
- `bon` (finetune/best_of_n.py): best-of-n rejection sampling, then supervised fine-tuning on the winners.

Output folder: the PEFT adapter (adapter_config.json, adapter_model.safetensors), the tokenizer with
its chat template, `merged/` with `merge=True`, and `prefloop.json` (method, config, base policy,
reward model, data, metrics, and the evaluation once `prefloop align eval` has run).

Scaling out: the trainers are TRL's, so the same command runs data-parallel on several GPUs through
accelerate (each rank samples and scores its share of prompts; the first rank writes the output):

    accelerate launch --config_file reward/accelerate/multi_gpu.yaml "$(which prefloop)" align \
        --method grpo --policy smollm2-135m-instruct --reward-model runs/rm --prompts prompts.jsonl --out runs/aligned

On one GPU nothing is needed: the device is picked automatically, bf16 where the GPU supports it.
`--prompts-per-step` is per GPU. Best-of-n's ranks share the sampling before training, each its own prompts.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import random
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from collect.errors import UserError, check_settings, warn
from collect.offline_models import no_transformers_bar
from collect.output_dirs import check_output_dir, replacing_dir
from finetune.policy import check_causal_lm, load_tokenizer, resolve
from finetune.prompts import ProjectPrompts, fit_prompts, read_preferences, read_prompts
from finetune.training import (alignment_progress, check_lora_targets, is_main_process, pick_device, process_state,
                               summarize_history, use_bf16)
from reward.data import absolute_name

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from reward.progress import StopEarly

METHODS = ("grpo", "rloo", "dpo", "bon")
# Per-method defaults, chosen so that smollm2-135m-instruct finishes in minutes on a 2-core CPU
# (bench/results/align.md has the timings). LoRA learning rates are ~100x full fine-tuning ones.
METHOD_DEFAULTS: dict[str, dict[str, float]] = {
    "grpo": {"max_steps": 30, "learning_rate": 1e-4, "beta": 0.04},
    "rloo": {"max_steps": 30, "learning_rate": 1e-4, "beta": 0.04},
    "dpo": {"max_steps": 60, "learning_rate": 1e-4, "beta": 0.1},
    "bon": {"max_steps": 30, "learning_rate": 2e-4, "beta": 0.0},
}


@dataclass(kw_only=True)
class AlignConfig:
    """Everything an alignment run needs, given by name. Fields left as None take the method's default
    (METHOD_DEFAULTS; lora_alpha: 2 * lora_r)."""

    # What grpo, rloo and bon train on: prompts, to sample responses to. A JSONL/JSON/CSV/Parquet file or
    # save_to_disk folder with a `prompt` column (a string or a list of {role, content} messages), a
    # `datasets.Dataset`, a list of conversations, or a project of the collection database
    # (`finetune.prompts.ProjectPrompts`: its prompts).
    prompts: Any = None
    # What dpo trains on instead: preference pairs, as `reward train` takes them. A preference dataset (TRL format:
    # prompt, chosen, rejected, as `prefloop export` writes it; or raw HH-RLHF) in any form `prompts` takes, or a
    # `ProjectPrompts` (the project's judged pairs, as `prefloop export` would write them).
    data: Any = None
    # Where the adapter, prefloop.json (and merged/) are written; created if missing.
    output_dir: str | Path
    # grpo | rloo | dpo | bon.
    method: str = "grpo"
    # The policy to align: an alias (collect.offline_models), a Hugging Face id or a local directory.
    policy: str = "smollm2-135m-instruct"
    # Reward-model directory from reward/ (required by grpo, rloo and bon). dpo trains without one; given
    # with dpo, it only serves the final evaluation.
    reward_model: str | None = None
    # A Jinja chat template (text or .jinja path) replacing the tokenizer's; saved with the adapter.
    chat_template: str | None = None
    # Optimizer steps. Each step consumes `prompts_per_step` prompts (or pairs for dpo).
    max_steps: int | None = None
    # LoRA learning rate (constant after no warm-up: short runs need every step).
    learning_rate: float | None = None
    # KL penalty to the base model (grpo/rloo), or DPO's temperature beta (dpo); unused by bon.
    beta: float | None = None
    # Prompts (or preference pairs) per optimizer step.
    prompts_per_step: int = 2
    # Responses sampled per prompt: the group size of grpo/rloo, the n of best-of-n.
    num_generations: int = 4
    # Prompts longer than this many tokens (chat template included) lose their oldest turns; a prompt
    # whose last user turn alone is too long is dropped (counted in prefloop.json).
    max_prompt_length: int = 256
    # Most tokens sampled per response (grpo/rloo/bon); the response budget of a dpo sequence.
    max_completion_length: int = 64
    # Sampling temperature while training (grpo/rloo/bon).
    temperature: float = 0.8
    # Reward subtracted per response token (grpo/rloo), added as a second reward function; 0 disables it.
    length_penalty: float = 0.0
    # LoRA rank.
    lora_r: int = 16
    # LoRA scaling numerator (the update is scaled by lora_alpha / lora_r); None: 2 * lora_r, the same scale at any
    # rank (32 at the default rank), as reward models train.
    lora_alpha: int | None = None
    # Dropout on the LoRA branch, and which modules get adapters ("all-linear" or a list of names).
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    # Use at most this many prompts (after a seeded shuffle); None keeps them all.
    max_prompts: int | None = None
    # Stop training after this many seconds (on the first process's clock under `accelerate launch`), then save
    # the adapter as if the run had finished; None runs all max_steps. For bon the clock starts with sampling,
    # which a spent budget ends (in one process); training then stops after its first step.
    time_budget_s: float | None = None
    # Seeds the shuffle, LoRA initialisation and sampling.
    seed: int = 0
    # Also write a merged model (the base checkpoint in its own dtype with the adapter merged in) to
    # output_dir/merged.
    merge: bool = False
    # Held-out prompts: when set, `finetune.evaluate` runs at the end and its summary lands in prefloop.json.
    eval_prompts: Any = None
    # Independent reward model for that evaluation (trained on a disjoint split, to expose reward hacking).
    judge: str | None = None
    # Rich progress bar and summary table on the console.
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        for name, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, name) is None:
                setattr(self, name, type(value)(value) if name != "max_steps" else int(value))
        self.output_dir = Path(self.output_dir)
        for name in ("max_steps", "prompts_per_step", "max_prompt_length", "max_completion_length", "lora_r"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise UserError(f"time_budget_s (--time-budget) must be above 0, got {self.time_budget_s}")
        # What torch, TRL or PEFT would refuse with a traceback after the model has loaded, or quietly reinterpret.
        check_settings(self, (
            ("learning_rate", 0 < self.learning_rate < math.inf, "above 0"),
            ("temperature", 0 < self.temperature < math.inf, "above 0"),
            ("num_generations", self.num_generations >= 1, "at least 1"),
            ("lora_alpha", self.lora_alpha >= 1, "at least 1"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("max_prompts", self.max_prompts is None or self.max_prompts >= 1, "at least 1 (leave it out for all)"),
            ("beta", self.beta is None or 0 <= self.beta < math.inf, "0 or more")))
        if self.method == "dpo" and self.beta == 0:  # DPO's loss is then log 2 whatever the weights: nothing trains
            raise UserError("beta (--beta) must be above 0 for dpo: at 0 its loss does not depend on the policy")
        if self.method in ("grpo", "rloo") and self.num_generations < 2:
            raise UserError(f"num_generations must be at least 2 for {self.method} (it compares responses)")
        if self.method != "dpo" and not self.reward_model:
            raise UserError(f"method {self.method} needs a reward model: reward_model (--reward-model), a folder "
                            "from `prefloop reward train`")
        self._check_training_data()

    def _check_training_data(self) -> None:
        """dpo learns from preference pairs (`data`); the other methods sample responses to `prompts`."""
        if self.method == "dpo":
            if self.prompts is not None:
                raise UserError("method dpo trains on preference pairs, not on prompts: give them as data (--data), "
                                "not as prompts (--prompts)")
            if self.data is None:
                raise UserError("method dpo needs preference pairs: data (--data, or --project)")
            return
        if self.data is not None:
            raise UserError(f"method {self.method} samples its own responses to prompts: give them as prompts "
                            "(--prompts); data (--data) is the preference pairs dpo trains on")
        if self.prompts is None:
            raise UserError(f"method {self.method} needs prompts: prompts (--prompts, or --project)")


@dataclass
class AlignResult:
    output_dir: Path  # the adapter directory
    merged_dir: Path | None  # the merged model, with merge=True
    metrics: dict[str, float]  # training numbers (first/last loss and reward, runtime, ...)
    evaluation: dict[str, Any] | None  # the summary of the held-out evaluation, when eval_prompts was given
    stopped: str | None = None  # why training ended before max_steps (Ctrl-C, the time budget), or None


def align(config: AlignConfig) -> AlignResult:
    """Train a LoRA adapter with `config.method` and save it with prefloop.json. See AlignConfig."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from reward.progress import StopEarly, StopOnNonFiniteWeights

    started = time.monotonic()
    console = Console(quiet=not config.show_progress, markup=False)
    from finetune.rewards import reward_model_info, warn_if_judge_is_reward_model

    reward_info = None
    if config.reward_model:
        reward_info = reward_model_info(config.reward_model)
        if config.method == "dpo":
            reward_info = None  # checked for the evaluation, but not what the adapter was trained against
    check_output_dir(config.output_dir, "prefloop.json", "prefloop.aligned_policy",  # before training, not at the save
                     {f"{name} ({flag})": getattr(config, name) for name, flag in (
                         ("prompts", "--prompts"), ("data", "--data"), ("policy", "--policy"),
                         ("reward_model", "--reward-model"),
                         ("judge", "--judge"), ("eval_prompts", "--eval-prompts"),
                         ("chat_template", "--chat-template"))})
    # A local folder as its absolute path: PEFT records the path the model loaded from in the adapter's config,
    # and a relative one named another folder (or none) wherever the adapter was loaded from.
    path = absolute_name(resolve(config.policy))
    check_causal_lm(path, config.policy)  # a reward model as --policy trained a random lm_head
    tokenizer = load_tokenizer(config.policy, config.chat_template)

    data, data_stats = training_data(config, tokenizer)
    ranks = process_state().num_processes
    if config.method in ("grpo", "rloo") and len(data) < config.prompts_per_step * ranks:
        # Transformers then ran no step at all and an untrained adapter was saved, exit 0. Under `accelerate
        # launch` a step takes prompts_per_step on every rank.
        raise UserError(f"{len(data)} prompt(s) to train on, fewer than one step takes (prompts_per_step, "
                        f"--prompts-per-step, is {config.prompts_per_step}" + (f", on each of {ranks} processes"
                                                                                if ranks > 1 else "")
                        + "); lower it or give more prompts")
    if config.eval_prompts is not None:  # the evaluation's inputs, checked before hours of training
        if not (config.reward_model or config.judge):
            raise UserError("eval_prompts (--eval-prompts): the evaluation needs a reward model to compare with: "
                            "pass --reward-model and/or --judge")
        held_out = read_prompts(config.eval_prompts)
        if config.judge:
            reward_model_info(config.judge, "judge (--judge)")
            warn_if_judge_is_reward_model(config.reward_model, config.judge)  # said again with the evaluation
        # Fitted as training fitted its prompts (oldest turns dropped to fit max_prompt_length), as the evaluation
        # will fit them (refused now if none fit); DPO's prompts are its pairs'.
        fitted, _ = fit_prompts(tokenizer, held_out, config.max_prompt_length, "eval_prompts")
        trained_on = {json.dumps(p["prompt"] if config.method == "dpo" else p, sort_keys=True) for p in data}
        seen = sum(json.dumps(p, sort_keys=True) in trained_on for p in fitted)
        if seen:
            warn(f"eval_prompts: {seen} of {len(held_out)} held-out prompt(s) are also training prompts: "
                 "the evaluation then measures memory, not generalisation")
    dtype = torch.bfloat16 if use_bf16() else torch.float32
    with no_transformers_bar():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    # Older TRL releases wrap the model in LoRA before seeding, drawing the A matrices from whatever random state
    # the process had: the same data, policy and seed then gave another adapter on each run.
    set_seed(config.seed)
    check_lora_targets(model, config.lora_target_modules)
    progress = alignment_progress(f"{config.method} on {Path(str(config.policy)).name}", show=config.show_progress)
    # The first Ctrl-C or the time budget ends training after its step; the adapter so far is then saved (and
    # evaluated) as usual.
    stop_early, divergence = StopEarly(config.time_budget_s), StopOnNonFiniteWeights()
    # TRL's trainer makes its output_dir when it starts: a run that ends before the save (a second Ctrl-C, an
    # error, divergence) takes that empty folder away again, unless it was there before.
    made_here = not Path(config.output_dir).exists()
    try:
        trainer, extra = _train(config, model, tokenizer, data, [progress, stop_early, divergence], stop_early,
                                console)
    except BaseException:
        _drop_if_made_empty(Path(config.output_dir), made_here)
        raise
    finally:
        stop_early.release()
    if divergence.diverged:
        _drop_if_made_empty(Path(config.output_dir), made_here)
        raise UserError(f"training diverged: {divergence.diverged}; nothing was saved (a lower --learning-rate, now "
                        f"{config.learning_rate:g}, usually helps)")

    out = Path(config.output_dir)
    merged_dir = out / "merged" if config.merge else None
    metrics = summarize_history(progress.history) | extra
    evaluation = None
    if not is_main_process():  # under `accelerate launch`, the first rank writes for everyone
        # No rank leaves before the first has written the adapter: a rank that left the process group while the
        # first was still in it died with SIGABRT now and then ("terminate called without an active exception").
        process_state().wait_for_everyone()
        return AlignResult(output_dir=out, merged_dir=merged_dir, metrics=metrics, evaluation=None,
                           stopped=stop_early.reason)
    # Written into a staging folder that then replaces `out` whole: no file of an earlier run stays beside it.
    # What training computed in: Transformers takes `accelerate launch`'s mixed_precision where align asks for none.
    precision = {"no": "fp32"}.get(trainer.args.mixed_precision, trainer.args.mixed_precision)
    with replacing_dir(out) as staging, no_transformers_bar():
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        peft_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # The merge and the evaluation load the model afresh: free the trained one first.
        del trainer, peft_model, model
        gc.collect()
        if merged_dir is not None:
            write_merged(path, staging, staging / "merged")
            tokenizer.save_pretrained(staging / "merged")
        metrics["wall_s"] = time.monotonic() - started
        write_manifest(staging, config, path, reward_info, data_stats, metrics, stop_early.reason, precision)
    process_state().wait_for_everyone()  # the other ranks return now; the evaluation below is the first rank's
    if config.eval_prompts is not None:
        from finetune.evaluate import EvalConfig, evaluate

        evaluation = evaluate(EvalConfig(
            adapter=str(out), prompts=config.eval_prompts, reward_model=config.reward_model, judge=config.judge,
            seed=config.seed, show_progress=config.show_progress,
        )).summary
    _print_summary(console, config, out, metrics, evaluation, stop_early.reason)
    return AlignResult(output_dir=out, merged_dir=merged_dir, metrics=metrics, evaluation=evaluation,
                       stopped=stop_early.reason)


def _drop_if_made_empty(out: Path, made_here: bool) -> None:
    if made_here and is_main_process():
        with contextlib.suppress(OSError):  # not empty (or gone): left as it is
            out.rmdir()


def write_merged(base_path: str, adapter_dir: Path, merged_dir: Path) -> None:
    """The base checkpoint, loaded in its own dtype, with the saved adapter merged in.

    Not the trained model merged in place: on a GPU that is bfloat16, and a float32 base (smollm2's cached
    checkpoint, say) merged in bf16 loses much of the LoRA update to rounding (8-bit mantissa: a weight changes by
    about 1/256 of itself or not at all). A bf16 checkpoint merges in bf16 either way.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with no_transformers_bar():
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(merged_dir)


def training_data(config: AlignConfig, tokenizer) -> tuple[list, dict[str, Any]]:
    """The checked, shuffled, length-fitted prompts (or preference rows for dpo), and counts for prefloop.json."""
    rng = random.Random(config.seed)
    if config.method == "dpo":
        pairs, ties = read_preferences(config.data)
        rng.shuffle(pairs)
        pairs = pairs[:config.max_prompts] if config.max_prompts else pairs
        fitted, kept = fit_prompts(tokenizer, [p["prompt"] for p in pairs], config.max_prompt_length, "preferences")
        rows = [dict(pairs[i], prompt=prompt) for prompt, i in zip(fitted, kept)]
        return rows, {"pairs": len(rows), "dropped_too_long": len(pairs) - len(rows), "skipped_ties": ties}
    prompts = read_prompts(config.prompts)
    rng.shuffle(prompts)
    prompts = prompts[:config.max_prompts] if config.max_prompts else prompts
    fitted, _ = fit_prompts(tokenizer, prompts, config.max_prompt_length)
    stats: dict[str, Any] = {"prompts": len(fitted), "dropped_too_long": len(prompts) - len(fitted)}
    if config.method == "bon":
        # Best-of-n samples only the prompts its SFT steps see once: the same prompt budget as grpo. Under
        # `accelerate launch` a step takes prompts_per_step on every rank.
        fitted = fitted[:config.max_steps * config.prompts_per_step * process_state().num_processes]
        stats["prompts_sampled"] = len(fitted)
    return fitted, stats


def _train(config: AlignConfig, model, tokenizer, data: list, callbacks: list[TrainerCallback],
           stop_early: StopEarly, console: Console):
    """Run the method; returns the trainer (its model is the PeftModel) and method-specific metrics. `stop_early`
    is among the callbacks; best-of-n also asks it between sampling batches."""
    if config.method == "dpo":
        from finetune.dpo import train_dpo

        return train_dpo(config, model, tokenizer, data, callbacks), {}
    from finetune.rewards import RewardFunction, load_scorer

    scorer = load_scorer(config.reward_model, device=pick_device())
    if config.method == "bon":
        from finetune.best_of_n import best_responses, train_best_of_n

        # The budget and the first Ctrl-C cover sampling as well: they end it after the current batch, and
        # training then stops after its first step (the stop still stands) and saves.
        stop_early.begin("sampling batch")
        with console.status(f"sampling {config.num_generations} responses for {len(data)} prompts"):
            rows, extra = best_responses(config, model, tokenizer, data, scorer, stop_early.stop_sampling)
        if not rows:
            stopped = f" sampled before the stop ({stop_early.reason})" if stop_early.reason else ""
            raise UserError(f"best-of-n: the policy produced no non-empty response to any prompt{stopped}")
        return train_best_of_n(config, model, tokenizer, rows, callbacks), extra
    from finetune.rl import train_rl

    return train_rl(config, model, tokenizer, data, RewardFunction(scorer), callbacks), {}


def write_manifest(
    out: Path, config: AlignConfig, policy_path: str, reward_info: dict | None, data: dict, metrics: dict,
    stopped: str | None, precision: str,
) -> None:
    import peft
    import torch
    import transformers
    import trl

    settings = {f.name: getattr(config, f.name) for f in fields(config)}
    for name in ("prompts", "data", "eval_prompts"):
        value = getattr(config, name)
        described = isinstance(value, (str, Path, ProjectPrompts))
        settings[name] = None if value is None else str(value) if described else f"<{type(value).__name__}>"
    settings["output_dir"] = str(config.output_dir)
    manifest = {
        "kind": "prefloop.aligned_policy",
        "method": config.method,
        "config": settings,
        "base_policy": {"name": config.policy, "path": absolute_name(policy_path)},
        "reward_model": None if reward_info is None else {
            "path": absolute_name(config.reward_model),
            **{k: reward_info[k] for k in ("base_model", "max_length", "truncation_side", "metrics")
               if k in reward_info},
        },
        "data": data,
        "metrics": metrics,
        "stopped": stopped,
        "evaluation": None,
        "device": pick_device(),
        "precision": precision,
        # How the run was launched: --prompts-per-step is per process, so a step took this many times as many.
        "processes": process_state().num_processes,
        "distributed": process_state().distributed_type.value,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "prefloop.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def _print_summary(console: Console, config: AlignConfig, out: Path, metrics: dict, evaluation: dict | None,
                   stopped: str | None) -> None:
    table = Table(title=f"prefloop align: {config.method}", show_header=False)
    table.add_row("adapter", str(out))
    if stopped:
        table.add_row("stopped early", stopped)
    for key in ("first_reward", "last_reward", "first_loss", "last_loss", "last_rewards_margins",
                "bon_mean_reward_all", "bon_mean_reward_best", "wall_s"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4g}")
    if evaluation:
        for key in ("win_rate_reward_model", "win_rate_judge", "kl_to_base", "mean_length_aligned"):
            if evaluation.get(key) is not None:
                table.add_row(key, f"{evaluation[key]:.4g}")
    console.print(table)

"""`prefloop reward train | eval | compare | score`: thin wrappers over reward.train, reward.evaluate, reward.score."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from collect.errors import UserError
from reward.train import DEFAULTS, RewardTrainingConfig

app = typer.Typer(help="Reward models: train on preference data, evaluate, compare two, score conversations.",
                  no_args_is_help=True)
console = Console(markup=False)  # paths and category values are printed as given: "[v2]" is not a style


@app.command()
def train(
    data: str = typer.Option(
        ..., "--data", rich_help_panel="Data",
        help="Preference dataset: .parquet, .jsonl or .json (optionally .gz), or a save_to_disk folder (of a "
             "DatasetDict, its train split)."),
    base: str = typer.Option(
        DEFAULTS.base_model, "--base", rich_help_panel="Model",
        help="Backbone: minilm-l6, smollm2-135m-instruct, an HF id or a path."),
    out: Path = typer.Option(
        Path(DEFAULTS.output_dir), "--out", rich_help_panel="Model",
        help="Output model directory."),
    eval_data: Optional[str] = typer.Option(
        DEFAULTS.eval_data, "--eval-data", rich_help_panel="Data",
        help="Held-out pairs (of a DatasetDict, its test split; default: hold out --eval-fraction)."),
    eval_fraction: float = typer.Option(
        DEFAULTS.eval_fraction, "--eval-fraction", rich_help_panel="Data",
        help="Share of --data held out, grouped by prompt."),
    lora: bool = typer.Option(
        DEFAULTS.lora, "--lora", rich_help_panel="Model",
        help="Train LoRA adapters and the score head, save a merged model."),
    lora_r: int = typer.Option(DEFAULTS.lora_r, "--lora-r", rich_help_panel="Model", help="LoRA rank."),
    lora_alpha: Optional[int] = typer.Option(
        DEFAULTS.lora_alpha, "--lora-alpha", rich_help_panel="Model",
        help="LoRA scale numerator (updates scaled by alpha / r; default 2 * r)."),
    backbone_layers: Optional[int] = typer.Option(
        DEFAULTS.backbone_layers, "--backbone-layers", rich_help_panel="Model",
        help="Keep only the bottom N layers of the base model (default: all)."),
    trainable_layers: Optional[int] = typer.Option(
        DEFAULTS.trainable_layers, "--trainable-layers", rich_help_panel="Model",
        help="Train only the top N layers and the head; 0: the head alone (default: all)."),
    no_frozen_cache: bool = typer.Option(
        False, "--no-frozen-cache", rich_help_panel="Model",
        help="With --trainable-layers, recompute the frozen layers every epoch."),
    no_margin: bool = typer.Option(
        False, "--no-margin", rich_help_panel="Data",
        help="Ignore the data's margin column."),
    no_share_prompt: bool = typer.Option(
        False, "--no-share-prompt", rich_help_panel="Model",
        help="On a decoder, run chosen and rejected as two sequences, the prompt twice."),
    max_length: int = typer.Option(
        DEFAULTS.max_length, "--max-length", rich_help_panel="Data",
        help="Longest sequence in tokens (longer: truncated)."),
    truncation_side: str = typer.Option(
        DEFAULTS.truncation_side, "--truncation-side", rich_help_panel="Data",
        help="left keeps the end of the dialogue."),
    no_align_truncation: bool = typer.Option(
        False, "--no-align-truncation", rich_help_panel="Data",
        help="Cut each side of an over-long pair alone (default: both alike)."),
    epochs: float = typer.Option(
        DEFAULTS.num_train_epochs, "--epochs", rich_help_panel="Training",
        help="Passes over the training pairs."),
    max_steps: int = typer.Option(
        DEFAULTS.max_steps, "--max-steps", rich_help_panel="Training",
        help="Stop after this many steps when > 0."),
    batch_size: int = typer.Option(
        DEFAULTS.batch_size, "--batch-size", rich_help_panel="Training",
        help="Pairs per device per step."),
    gradient_accumulation_steps: int = typer.Option(
        DEFAULTS.gradient_accumulation_steps, "--gradient-accumulation-steps", rich_help_panel="Training",
        help="Steps summed per update: a smaller --batch-size, same update."),
    learning_rate: Optional[float] = typer.Option(
        DEFAULTS.learning_rate, "--learning-rate", rich_help_panel="Training",
        help=f"Default {DEFAULTS.peak_learning_rate():g} (full), "
        f"{RewardTrainingConfig(data=None, lora=True).peak_learning_rate():g} (LoRA, --trainable-layers)."),
    evals_per_epoch: int = typer.Option(
        DEFAULTS.evals_per_epoch, "--evals-per-epoch", rich_help_panel="Training",
        help="Held-out evaluations per epoch; the latest that no earlier one beats significantly is kept (2 halves"
             " their cost)."),
    center_rewards: Optional[float] = typer.Option(
        DEFAULTS.center_rewards_coefficient, "--center-rewards", rich_help_panel="Training",
        help="Reward-centering weight; 0 disables."),
    time_budget: Optional[float] = typer.Option(
        DEFAULTS.time_budget_s, "--time-budget", rich_help_panel="Training",
        help="Stop training after this many seconds."),
    precision: str = typer.Option(
        DEFAULTS.precision, "--precision", rich_help_panel="Model",
        help="auto | fp32 | bf16 | fp16."),
    gradient_checkpointing: bool = typer.Option(
        DEFAULTS.gradient_checkpointing, "--gradient-checkpointing", rich_help_panel="Model",
        help="Less memory, slower."),
    seed: int = typer.Option(
        DEFAULTS.seed, "--seed", rich_help_panel="Training",
        help="Seeds the held-out split, the head's initialisation and the data order."),
) -> None:
    """Train a reward model with TRL's RewardTrainer."""
    from reward.train import train_reward_model

    train_reward_model(RewardTrainingConfig(
        data=data, base_model=base, output_dir=str(out), eval_data=eval_data, eval_fraction=eval_fraction,
        lora=lora, lora_r=lora_r, lora_alpha=lora_alpha, backbone_layers=backbone_layers,
        trainable_layers=trainable_layers, cache_frozen_layers=not no_frozen_cache, use_margin=not no_margin,
        share_prompt=not no_share_prompt, max_length=max_length, truncation_side=truncation_side,
        align_truncation=not no_align_truncation,
        num_train_epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate,
        center_rewards_coefficient=center_rewards or None, evals_per_epoch=evals_per_epoch,
        time_budget_s=time_budget, precision=precision, gradient_checkpointing=gradient_checkpointing, seed=seed,
    ))


@app.command("eval")
def eval_(
    model: List[str] = typer.Option(..., "--model", help="Reward-model directory (repeat for an ensemble)."),
    data: str = typer.Option(..., "--data", help="Preference dataset to evaluate on (of a DatasetDict, its test split)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for eval.json and the PNGs (default MODEL/eval, "
                                       "or FIRST-MODEL/eval-ensemble for several)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    n_bootstrap: int = typer.Option(1000, "--n-bootstrap", min=100, help="Bootstrap resamples for the intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draws behind the intervals."),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=8, help="Cut longer conversations to this "
                                             "many tokens (default: the length each model trained with, else "
                                             "its own limit)."),
) -> None:
    """Accuracy with intervals, by source and category, calibration, length bias, margin agreement."""
    from collect.offline_models import resolve_model
    from reward.evaluate import evaluate_reward_model

    if out is None and not Path(model[0]).is_dir():
        resolve_model(model[0])  # a file, or a folder that is not there, is named as such first
        # Beside a Hub id or an alias, "acme/rm/eval" would make a local acme/rm that then shadows the model.
        raise UserError(f"--out: {model[0]} is not a local folder to write the evaluation beside; name one")
    out = out or Path(model[0]) / ("eval" if len(model) == 1 else "eval-ensemble")
    report = evaluate_reward_model(model if len(model) > 1 else model[0], data, out,
                                   batch_size=batch_size, n_bootstrap=n_bootstrap, seed=seed, max_length=max_length)
    print_report(report)
    console.print(f"wrote {out / 'eval.json'}, reliability.png, accuracy.png")


@app.command()
def compare(
    model: List[str] = typer.Option(..., "--model", help="Reward-model directory (repeat for an ensemble)."),
    baseline: List[str] = typer.Option(..., "--baseline", help="The reward model to compare it with (repeat for an "
                                       "ensemble)."),
    data: str = typer.Option(..., "--data", help="Preference dataset both score (of a DatasetDict, its test split)."),
    out: Optional[str] = typer.Option(None, "--out", help="Also write the comparison to this JSON file."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    n_bootstrap: int = typer.Option(1000, "--n-bootstrap", min=100, help="Bootstrap resamples for the intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draws behind the intervals."),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=8, help="Cut longer conversations to this "
                                             "many tokens (default: the length each model trained with, else "
                                             "its own limit)."),
) -> None:
    """Is --model better than --baseline on the same pairs? Accuracy difference, interval and exact test over prompts."""
    from collect.output_dirs import file_path
    from reward.evaluate import compare_reward_models

    out = file_path(out, "out (--out)") if out is not None else None
    report = compare_reward_models(model if len(model) > 1 else model[0],
                                   baseline if len(baseline) > 1 else baseline[0], data, out,
                                   batch_size=batch_size, n_bootstrap=n_bootstrap, seed=seed, max_length=max_length)
    print_comparison(report)
    if out is not None:
        console.print(f"wrote {out}")


@app.command()
def score(
    model: List[str] = typer.Option(..., "--model", help="Reward-model directory (repeat for an ensemble)."),
    data: str = typer.Option(..., "--data", help="messages, prompt+completion, or prompt+chosen+rejected rows."),
    out: Optional[str] = typer.Option(None, "--out", help="Output .jsonl or .parquet (default: DATA's name less "
                                       "its extension, plus .scored.jsonl, in the current folder)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=8, help="Cut longer conversations to this "
                                             "many tokens (default: the length each model trained with, else "
                                             "its own limit)."),
) -> None:
    """Add reward columns (and the ensemble spread) to every row of a dataset."""
    from collect.output_dirs import file_path
    from reward.score import score_file

    out = file_path(out, "out (--out)") if out is not None else None
    name = Path(data).name
    for extension in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(extension)
    if out is None:
        out = Path(f"{name or 'data'}.scored.jsonl")
        if out.exists():  # a name the user did not give: another file's scores (a.jsonl and b/a.jsonl) may be there
            raise UserError(f"{out} exists; pass --out {out} to replace it, or another name")
    written = score_file(model if len(model) > 1 else model[0], data, out, batch_size=batch_size, max_length=max_length)
    console.print(f"wrote {written}")


def print_report(report: dict) -> None:
    from rich.table import Table

    members = f" (ensemble of {len(report['model'])})" if len(report["model"]) > 1 else ""
    table = Table(title=f"reward-model evaluation{members} on {report['data']}")
    for column in ("slice", "n", "accuracy", "95% interval", "interval from"):
        table.add_column(column)

    def row(label: str, entry: dict) -> None:
        if entry["n"]:
            method = "bootstrap over pairs" if entry["ci_method"] == "bootstrap" else entry["ci_method"]
            table.add_row(label, str(entry["n"]), f"{entry['accuracy']:.3f}",
                          f"{entry['ci'][0]:.3f} - {entry['ci'][1]:.3f}", method)

    row("all", report)
    if "per_comparison" in report:
        row("each comparison once", report["per_comparison"])
    for column, entries in report["by"].items():
        for value, entry in entries.items():
            row(f"{column} = {value}", entry)
    if "length_bias" in report:
        row("chosen is longer", report["length_bias"]["chosen_longer"])
        row("chosen is shorter", report["length_bias"]["chosen_shorter"])
    console.print(table)
    bias = report.get("length_bias")
    if bias and bias["share_chosen_longer"] is not None:
        unequal = bias["chosen_longer"]["n"] + bias["chosen_shorter"]["n"]
        equal = f" ({bias['equal_length']} of equal length left out)" if bias["equal_length"] else ""
        tied, share = bias["tied_unequal_length"], bias["model_prefers_longer"]
        model = ("the model gave both sides of each the same reward" if share is None else
                 f"the model prefers it in {share:.0%}" + (f" ({tied} with equal rewards left out)" if tied else ""))
        console.print(f"length: of the {unequal} pairs whose responses differ in length{equal}, the raters chose the "
                      f"longer in {bias['share_chosen_longer']:.0%}, {model}")
    print_truncated(report["truncated"], report["n"])
    if report["ties"]:
        console.print(f"ties: {report['ties']} pair(s) got equal rewards, counted wrong")
    if "per_comparison" in report:
        c = report["per_comparison"]
        evenly = f"; {c['rated_evenly']} rated evenly both ways left out" if c["rated_evenly"] else ""
        console.print(f"each comparison once: the {report['n']} pairs hold {c['comparisons']} distinct comparisons "
                      f"(same prompt, same two responses), each counted once as most of its raters labelled it"
                      f"{evenly}")
    for column, why in report.get("not_broken_down", {}).items():
        console.print(f"not broken down by {column}: {why}")
    cal = report["calibration"]
    console.print(f"calibration: ECE {cal['ece']:.3f}; a calibrated model would show {cal['ece_if_calibrated']['mean']:.3f} "
                  f"on these pairs (95% of the time below {cal['ece_if_calibrated']['p95']:.3f})")
    if "note" in cal:
        console.print(f"calibration: {cal['note']}")
    if report.get("margin_correlation"):
        m = report["margin_correlation"]
        console.print(f"reward gap vs margin: Pearson {m['pearson']:.3f}, Spearman {m['spearman']:.3f} (n={m['n']})")
    elif "margin_correlation_missing" in report:
        console.print(f"reward gap vs margin: not computed ({report['margin_correlation_missing']})")
    if "ensemble_spread_mean" in report:
        console.print(f"ensemble spread (standard deviation across members), mean: {report['ensemble_spread_mean']:.3f}")


def print_truncated(truncated: dict, pairs: int, who: str = "") -> None:
    why = {"prefloop.json": "the length it trained with", "max_length given": "as --max-length says",
           "the model's own limit": "the model's own limit: nothing records the length it trained with",
           "trained with no limit": "the model's own limit: it was trained with no max_length",
           "its position limit": "the most positions the model has"}
    limits = "; ".join(dict.fromkeys(  # an ensemble's members often share one
        f"{limit['max_length']} tokens, cut from the {limit['truncation_side']} ({why[limit['from']]})"
        for limit in truncated["limits"]))
    console.print(f"{who}truncated: {truncated['pairs']} of {pairs} pairs; limit {limits}")


def print_comparison(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"reward models compared on {report['data']}: {report['n']} pairs, {report['prompts']} prompts")
    for column in ("", "accuracy", "95% interval"):
        table.add_column(column)
    for side in ("model", "baseline"):
        entry = report[side]
        names = ", ".join(report["models"][side])
        table.add_row(f"{side} ({names})", f"{entry['accuracy']:.3f}", f"{entry['ci'][0]:.3f} - {entry['ci'][1]:.3f}")
    interval = (f"{report['ci'][0]:+.3f} - {report['ci'][1]:+.3f}" if report["ci_method"] else
                f"none: {report['ci_missing']} (p decides)")
    table.add_row("difference", f"{report['difference']:+.3f}", interval)
    console.print(table)
    for side, truncated in report["truncated"].items():
        print_truncated(truncated, report["n"], f"{side}: ")
    console.print(f"pairs only the model ranks right: {report['only_model_right']}, only the baseline: "
                  f"{report['only_baseline_right']}; exact permutation test over prompts, two-sided p = "
                  f"{report['p_value']:.3g}")
    if "per_comparison" in report:
        c = report["per_comparison"]
        interval = f"{c['ci'][0]:+.3f} - {c['ci'][1]:+.3f}" if c["ci_method"] else f"none: {c['ci_missing']}"
        evenly = f", {c['rated_evenly']} rated evenly both ways left out" if c["rated_evenly"] else ""
        console.print(f"each comparison once ({c['comparisons']} distinct among {report['n']} pairs, as most of its "
                      f"raters labelled it{evenly}): model {c['model']['accuracy']:.3f}, baseline "
                      f"{c['baseline']['accuracy']:.3f}, difference {c['difference']:+.3f} ({interval}), p = "
                      f"{c['p_value']:.3g}")

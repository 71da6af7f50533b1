"""`prefloop align --method M --policy P --reward-model RM --prompts X --out DIR` trains (dpo: `--data PAIRS` instead
of --prompts and the reward model); `prefloop align eval ...` measures. Thin wrappers over finetune.align.align and
finetune.evaluate.evaluate: the options are AlignConfig's and EvalConfig's fields, but for --out (output_dir),
--time-budget (time_budget_s) and --project (a ProjectPrompts as prompts, or as data for dpo)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from collect.cli_options import DB_OPTION

app = typer.Typer(help="Train a LoRA adapter that aligns a policy: to a reward model (grpo, rloo, bon, on --prompts) "
                  "or to preference pairs (dpo, on --data). Training takes the options below and needs --out and "
                  "one of --prompts, --data or --project. `prefloop align eval` measures the adapter; its options "
                  "go after `eval`.",
                  subcommand_metavar="[eval [OPTIONS]]", no_args_is_help=True)


# The training options sit on the group itself, so `prefloop align --prompts ...` trains and
# `prefloop align eval ...` evaluates; --prompts, --data and --out are therefore checked here, not by click.
@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    prompts: Optional[str] = typer.Option(None, "--prompts", help="grpo, rloo, bon: prompts to sample responses "
                                          "to, a file or folder with a 'prompt' column."),
    data: Optional[str] = typer.Option(None, "--data", help="dpo: preference pairs (prompt, chosen, rejected), a "
                                       "file or folder as `prefloop export` writes it and `reward train` takes."),
    project: Optional[str] = typer.Option(None, "--project", help="Take the prompts (dpo: the judged pairs) from "
                                          "this project of the collection database instead."),
    db_url: Optional[str] = DB_OPTION,
    out: Optional[Path] = typer.Option(None, "--out", help="Adapter directory to write (with prefloop.json); "
                                       "training needs it."),
    method: str = typer.Option("grpo", "--method", help="grpo | rloo | dpo | bon."),
    policy: str = typer.Option("smollm2-135m-instruct", "--policy", help="Alias, Hugging Face id or local path."),
    reward_model: Optional[str] = typer.Option(None, "--reward-model", help="Reward-model directory (grpo, rloo, "
                                               "bon; with dpo: evaluation only)."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Jinja template (file or text)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (default per method)."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="Default per method."),
    beta: Optional[float] = typer.Option(None, "--beta", help="KL weight (grpo/rloo) or DPO beta."),
    prompts_per_step: int = typer.Option(2, "--prompts-per-step", help="Prompts (or pairs) per step."),
    num_generations: int = typer.Option(4, "--num-generations", help="Responses per prompt (group size; n of bon)."),
    max_prompt_length: int = typer.Option(256, "--max-prompt-length", help="Prompt tokens kept (oldest turns go)."),
    max_completion_length: int = typer.Option(64, "--max-completion-length", help="Tokens per sampled response."),
    temperature: float = typer.Option(0.8, "--temperature", help="Sampling temperature while training."),
    length_penalty: float = typer.Option(0.0, "--length-penalty", help="Reward subtracted per response token."),
    lora_r: int = typer.Option(16, "--lora-r", help="LoRA rank."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha",
                                             help="LoRA scale numerator (updates scaled by alpha / r; default 2 * r)."),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout", help="Dropout on the LoRA branch."),
    lora_target_modules: str = typer.Option("all-linear", "--lora-target-modules",
                                            help="all-linear, or comma-separated module names."),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts", help="Use at most this many prompts (dpo: "
                                              "pairs)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Stop training after this many seconds "
                                                "and save the adapter so far (bon: counted from the start of "
                                                "sampling)."),
    seed: int = typer.Option(0, "--seed"),
    merge: bool = typer.Option(False, "--merge", help="Also write a merged model to OUT/merged."),
    eval_prompts: Optional[str] = typer.Option(None, "--eval-prompts", help="Held-out prompts: evaluate at the end."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Independent reward model for that evaluation."),
) -> None:
    """Train a LoRA adapter that aligns POLICY to a reward model (grpo, rloo, bon) or to preferences (dpo)."""
    if ctx.invoked_subcommand is not None:
        # Options before the subcommand are the group's, training's: `eval` would run without them.
        given = [param.opts[0] for param in ctx.command.params
                 if getattr(ctx.get_parameter_source(param.name), "name", None) == "COMMANDLINE"]
        if given:
            command = ctx.invoked_subcommand
            ctx.fail(f"{', '.join(given)} before `{command}`: training options, which `align {command}` does not "
                     f"read; give its own options after `{command}` (see `prefloop align {command} --help`).")
        return
    sources = [flag for flag, value in (("--prompts", prompts), ("--data", data), ("--project", project))
               if value is not None]
    if len(sources) > 1:
        ctx.fail(f"{' and '.join(sources)} are mutually exclusive: give one source of training data.")
    if not sources:
        wanted = "'--data' or '--project'" if method == "dpo" else "'--prompts' or '--project'"
        ctx.fail(f"Missing option {wanted} (required to train an adapter).")
    if out is None:
        ctx.fail("Missing option '--out' (required to train an adapter).")
    from finetune.align import AlignConfig, align
    from finetune.prompts import ProjectPrompts

    if project is not None:  # the project's prompts, or for dpo its judged pairs
        if method == "dpo":
            data = ProjectPrompts(project, db_url)
        else:
            prompts = ProjectPrompts(project, db_url)
    align(AlignConfig(
        prompts=prompts, data=data, output_dir=out, method=method, policy=policy, reward_model=reward_model,
        chat_template=chat_template, max_steps=max_steps, learning_rate=learning_rate, beta=beta,
        prompts_per_step=prompts_per_step, num_generations=num_generations, max_prompt_length=max_prompt_length,
        max_completion_length=max_completion_length, temperature=temperature, length_penalty=length_penalty,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_target_modules=lora_target_modules if lora_target_modules == "all-linear"
        else [m.strip() for m in lora_target_modules.split(",") if m.strip()],
        max_prompts=max_prompts, time_budget_s=time_budget, seed=seed, merge=merge,
        eval_prompts=eval_prompts, judge=judge,
    ))


@app.command("eval")
def eval_(
    adapter: str = typer.Option(..., "--adapter", help="Adapter directory written by `prefloop align`."),
    prompts: str = typer.Option(..., "--prompts", help="Held-out prompts (not used in training)."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Base policy (default: from the adapter)."),
    reward_model: Optional[str] = typer.Option(None, "--reward-model",
                                               help="Training reward model (default: from the adapter)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Independent reward model (disjoint training split)."),
    max_prompts: Optional[int] = typer.Option(64, "--max-prompts", help="Evaluate on the first N prompts."),
    max_completion_length: Optional[int] = typer.Option(None, "--max-completion-length",
                                                        help="Tokens per sampled response. Default: as in training."),
    max_prompt_length: Optional[int] = typer.Option(None, "--max-prompt-length", help="Prompts fitted to this many "
                                                    "tokens (oldest turns go). Default: as in training."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature for both policies."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling for both policies; 1.0 keeps the KL "
                                "estimate one of the full distributions."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed, the same for both policies: prompts are sampled "
                             "--batch-size at a time, the batch starting at prompt i with seed + i."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per generate, forward or scoring call."),
    n_examples: int = typer.Option(3, "--n-examples", help="Side-by-side examples in the report."),
    out: Optional[str] = typer.Option(None, "--out", help="JSON report (default ADAPTER/evaluation.json; PNG beside)."),
) -> None:
    """Win rate of the aligned policy over its base under the reward model and a judge, KL, length."""
    from finetune.evaluate import EvalConfig, evaluate

    result = evaluate(EvalConfig(
        adapter=adapter, prompts=prompts, policy=policy, reward_model=reward_model, judge=judge,
        max_prompts=max_prompts, max_completion_length=max_completion_length, max_prompt_length=max_prompt_length,
        temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size, n_examples=n_examples, out=out,
    ))
    typer.echo(f"wrote {result.json_path} and {result.png_path}")

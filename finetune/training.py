"""Plumbing shared by every alignment method: device and precision, the LoRA config, TRL arguments, progress."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from reward.train import LogLines, checkpointing_argument


def pick_device() -> str:
    """This process's device: a GPU when there is one (its own under `accelerate launch`), else the CPU.
    Never fails for want of CUDA."""
    from accelerate import PartialState

    return str(PartialState().device)


def is_main_process() -> bool:
    """False on every rank but the first under `accelerate launch`: only one process writes files."""
    from accelerate import PartialState

    return PartialState().is_main_process


def use_bf16() -> bool:
    # TRL defaults to bf16=True; on a CPU that runs bf16 in emulation, about 3x slower than fp32.
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def lora_config(r: int, alpha: int, dropout: float, target_modules: str | list[str]) -> LoraConfig:
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )


def common_trainer_args(
    *, output_dir: str, max_steps: int, learning_rate: float, batch_size: int, seed: int,
    gradient_accumulation_steps: int = 1,
) -> dict[str, Any]:
    """TrainingArguments shared by the GRPO, RLOO, DPO and SFT configs, tuned for a small CPU first."""
    return dict(
        output_dir=output_dir,
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        seed=seed,
        bf16=use_bf16(),
        # No CUDA: say it is a CPU run, so Transformers neither refuses bf16 nor picks another accelerator.
        use_cpu=not torch.cuda.is_available(),
        # TRL turns checkpointing on by default: it saves memory a 135M model does not need and costs ~20% time.
        **checkpointing_argument(False),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,  # RichProgress below draws the bar
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def run(trainer) -> None:
    """Train without the Trainer printing raw log dicts: RichProgress shows them instead."""
    trainer.remove_callback(PrinterCallback)
    trainer.train()


class RichProgress(TrainerCallback):
    """One Rich progress bar for the run, with the latest logged loss and reward in its description. In a log
    (`reward.train.LogLines`) a line every tenth of the run instead."""

    def __init__(self, label: str, show: bool = True) -> None:
        self.label = label
        self.show = show
        self.progress: Progress | None = None
        self.task = None
        self.log_lines: LogLines | None = None
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.show or not state.is_world_process_zero:
            return
        self.log_lines = LogLines.for_run(state.max_steps)
        if self.log_lines is not None:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        self.history.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        shown = []
        for key in ("loss", "reward", "rewards/chosen", "rewards/margins"):
            if key in logs:
                shown.append(f"{key.split('/')[-1]} {logs[key]:.3f}")
        if not shown:
            return
        if self.progress is not None:
            self.progress.update(self.task, description=f"{self.label}  " + "  ".join(shown))
        elif self.log_lines is not None and self.log_lines.due(state.global_step):
            self.log_lines.print(self.label, state.global_step, "  ".join(shown))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.log_lines = None


def summarize_history(history: list[dict[str, float]]) -> dict[str, float]:
    """First and last value of the quantities worth reporting, and the trainer's final summary numbers."""
    out: dict[str, float] = {}
    steps = [h for h in history if "train_runtime" not in h]
    for key in ("loss", "reward", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "completions/mean_length"):
        values = [h[key] for h in steps if key in h]
        if values:
            name = key.replace("/", "_")
            out[f"first_{name}"] = values[0]
            out[f"last_{name}"] = values[-1]
    for h in history:
        if "train_runtime" in h:
            out["train_runtime_s"] = h["train_runtime"]
            out["train_loss"] = h.get("train_loss", float("nan"))
    return out

"""Plumbing shared by every alignment method: device and precision, the LoRA config, TRL arguments, progress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig
from transformers.trainer_callback import PrinterCallback

from collect.errors import UserError
from reward.progress import TrainingProgress, close_progress
from reward.models import checkpointing_argument, cpu_only

if TYPE_CHECKING:
    from accelerate import PartialState


def process_state() -> PartialState:
    """Accelerate's view of this process among data-parallel ranks (`num_processes`, `process_index`). Without
    CUDA the ranks are CPU ranks, as the trainers see them (`use_cpu`): Accelerate would otherwise count each of
    two CPU ranks as a run of its own."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


def pick_device() -> str:
    """This process's device: a GPU when there is one (its own under `accelerate launch`), else the CPU.
    Never fails for want of CUDA."""
    return str(process_state().device)


def is_main_process() -> bool:
    """False on every rank but the first under `accelerate launch`: only one process writes files."""
    return process_state().is_main_process


def use_bf16() -> bool:
    # TRL defaults to bf16=True; on a CPU that runs bf16 in emulation, about 3x slower than fp32.
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def lora_config(r: int, alpha: int, dropout: float, target_modules: str | list[str]) -> LoraConfig:
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )


def check_lora_targets(model, target_modules: str | list[str]) -> None:
    """UserError unless every module name listed matches a layer LoRA can wrap (linear, GPT-2's Conv1D, embedding)
    as PEFT matches it: the whole name or its dotted end (`q_proj`, `self_attn.q_proj`). PEFT would fail inside the
    trainer with NoMatchingPeftModuleError. A string is PEFT's own ("all-linear", or a regular expression), left
    to it."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(target_modules, str):
        return
    layers = [name for name, module in model.named_modules()
              if isinstance(module, (torch.nn.Linear, Conv1D, torch.nn.Embedding))]
    missing = [t for t in target_modules if not any(name == t or name.endswith("." + t) for name in layers)]
    if missing or not target_modules:
        names = sorted({name.rsplit(".", 1)[-1] for name in layers})
        raise UserError(f"lora_target_modules (--lora-target-modules) {', '.join(missing) or '(none)'}: no linear "
                        f"layer of the policy has that name; it has {', '.join(names)}")


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
        use_cpu=cpu_only(),
        # TRL turns checkpointing on by default: it saves memory a 135M model does not need and costs ~20% time.
        **checkpointing_argument(False),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,  # reward.progress.TrainingProgress draws the bar
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def run(trainer) -> None:
    """Train without the Trainer printing raw log dicts: TrainingProgress shows them instead."""
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
    finally:
        close_progress(trainer)


def alignment_progress(label: str, show: bool = True) -> TrainingProgress:
    """The progress callback of an alignment run, showing the numbers TRL's trainers log that matter most."""
    shown = {"loss": "loss", "reward": "reward", "rewards/chosen": "chosen", "rewards/margins": "margins"}
    return TrainingProgress(label, shown, show=show)


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

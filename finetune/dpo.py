"""DPO straight from raters' preferences: TRL's DPOTrainer with a LoRA adapter.

No reward model is involved. The reference model is the base model itself: TRL computes reference
log-probabilities with the adapter disabled when it gets a plain model, a `peft_config` and no ref_model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finetune.training import common_trainer_args, lora_config, run

if TYPE_CHECKING:
    from finetune.align import AlignConfig
    from transformers import TrainerCallback


def train_dpo(
    config: AlignConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[dict],
    callbacks: list[TrainerCallback],
):
    """Train on conversational rows (`prompt`, `chosen`, `rejected`) and return the trainer."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        **common_trainer_args(
            output_dir=str(config.output_dir), max_steps=config.max_steps, learning_rate=config.learning_rate,
            batch_size=config.prompts_per_step, seed=config.seed,
        ),
        beta=config.beta,
        # Prompts were fitted to max_prompt_length already (oldest turns dropped); what overflows is the
        # end of a long response, which matters least.
        max_length=config.max_prompt_length + config.max_completion_length,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules),
        callbacks=callbacks,
    )
    run(trainer)
    return trainer

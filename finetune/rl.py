"""GRPO and RLOO against a reward model: TRL's GRPOTrainer / RLOOTrainer with a LoRA adapter.

Both sample `num_generations` responses per prompt, score them with the reward model (plus the
optional length penalty), and push the policy toward responses that beat their group's average;
`beta` weighs a KL penalty to the base model, which PEFT gives for free by disabling the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finetune.prompts import Conversation
from finetune.rewards import LengthPenalty, RewardFunction
from finetune.training import common_trainer_args, lora_config, run

if TYPE_CHECKING:
    from finetune.align import AlignConfig
    from transformers import TrainerCallback


def train_rl(
    config: AlignConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Conversation],
    reward: RewardFunction,
    callbacks: list[TrainerCallback],
):
    """Train and return the trainer (its `.model` is the PeftModel)."""
    reward_funcs: list = [reward]
    if config.length_penalty:
        reward_funcs.append(LengthPenalty(config.length_penalty))
    args = dict(
        **common_trainer_args(
            output_dir=str(config.output_dir), max_steps=config.max_steps, learning_rate=config.learning_rate,
            # TRL counts completions, not prompts: each step sees prompts_per_step groups of num_generations.
            batch_size=config.prompts_per_step * config.num_generations, seed=config.seed,
        ),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        log_completions=False,
    )
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    if config.method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer_cls, trainer_args = GRPOTrainer, GRPOConfig(**args)
    else:
        from trl import RLOOConfig, RLOOTrainer

        trainer_cls, trainer_args = RLOOTrainer, RLOOConfig(**args)
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_funcs,
        args=trainer_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules),
        callbacks=callbacks,
    )
    run(trainer)
    return trainer

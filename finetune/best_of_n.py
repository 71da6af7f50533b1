"""Best-of-n rejection sampling: sample n responses per prompt, keep the one the reward model likes best,
and fine-tune on those with LoRA (TRL's SFTTrainer, loss on the response only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from collect.errors import warn
from finetune.prompts import Conversation
from finetune.rewards import score
from finetune.sampling import sample
from finetune.training import common_trainer_args, lora_config, pick_device, process_state, run

if TYPE_CHECKING:
    from finetune.align import AlignConfig
    from transformers import TrainerCallback


def best_responses(
    config: AlignConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Conversation],
    scorer,
    should_stop: Callable[[int, int], bool] | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Prompt-completion rows with the best of `num_generations` samples, and how much picking helped.
    `should_stop` may end sampling early (`finetune.sampling.sample`): the rows then cover the prompts sampled.

    Under `accelerate launch` each rank samples and scores its share of the prompts, and every rank gets all the
    rows, in prompt order, for the trainer to split again: the same rows as one process would pick."""
    from accelerate.utils import gather_object

    state = process_state()
    model.to(pick_device()).eval()
    samples = sample(
        model, tokenizer, prompts, n=config.num_generations, max_new_tokens=config.max_completion_length,
        temperature=config.temperature, seed=config.seed, should_stop=should_stop,
        shard=(state.process_index, state.num_processes),
    )
    picked = []  # (prompt index, row, every candidate's reward, the best one's, whether it was cut off)
    for index, texts, finished in zip(samples.indices, samples.texts, samples.finished):
        candidates = [(t, done) for t, done in zip(texts, finished) if t]
        if not candidates:
            continue
        prompt = prompts[index]
        rewards = score(scorer, [prompt + [{"role": "assistant", "content": t}] for t, _ in candidates])
        # A response cut off at max_completion_length would teach the policy to stop there (its SFT row closes the
        # turn): the finished ones compete, and cut-off ones only where none finished.
        cut_off = not any(done for _, done in candidates)
        best = max((i for i, (_, done) in enumerate(candidates) if done or cut_off), key=rewards.__getitem__)
        picked.append((index, {"prompt": prompt, "completion": [{"role": "assistant", "content": candidates[best][0]}]},
                       rewards, rewards[best], cut_off))
    if state.num_processes > 1:
        picked = sorted(gather_object(picked), key=lambda p: p[0])
    rows = [row for _, row, *_ in picked]
    all_rewards = [r for _, _, rewards, *_ in picked for r in rewards]
    best_rewards = [best for *_, best, _ in picked]
    cut = sum(cut_off for *_, cut_off in picked)
    if cut:
        warn(f"best-of-n: {cut} of {len(rows)} prompt(s) had no response that finished within max_completion_length "
             f"({config.max_completion_length} tokens, --max-completion-length); their pick, cut off, teaches the "
             "policy to stop there: raise it")
    stats = {
        "bon_prompts": float(len(rows)),
        "bon_mean_reward_all": sum(all_rewards) / max(len(all_rewards), 1),
        "bon_mean_reward_best": sum(best_rewards) / max(len(best_rewards), 1),
        "bon_picked_cut_off": float(cut),
    }
    return rows, stats


def train_best_of_n(
    config: AlignConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    callbacks: list[TrainerCallback],
):
    """Supervised fine-tuning on the best responses; returns the trainer."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **common_trainer_args(
            output_dir=str(config.output_dir), max_steps=config.max_steps, learning_rate=config.learning_rate,
            batch_size=config.prompts_per_step, seed=config.seed,
        ),
        max_length=config.max_prompt_length + config.max_completion_length,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules),
        callbacks=callbacks,
    )
    run(trainer)
    return trainer

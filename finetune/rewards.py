"""The reward model as TRL reward functions, and the optional length penalty.

Scoring is reward/'s RewardScorer, which encodes a conversation exactly as the reward model saw it
in training (its chat template or plain layout, max_length, left truncation, from its prefloop.json).
That is why the reward model reaches TRL as a function rather than as a bare model: TRL's built-in
path renders with the reward tokenizer's chat template and never truncates, which fails for encoders
without a template (minilm-l6) and misjudges long dialogues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from transformers import AutoConfig

from collect.errors import UserError, warn
from finetune.prompts import Conversation
from reward.data import as_messages
from reward.score import RewardScorer, check_reward_adapter, model_info


def reward_model_info(path: str, role: str = "reward model (--reward-model)") -> dict[str, Any]:
    """The reward model's prefloop.json (empty when it has none). Raises UserError unless `path` is a
    sequence classifier with a single output, or a PEFT adapter that makes one (`check_reward_adapter`).
    `role` names the option in every error: `align` takes a reward model and a judge."""
    from collect.offline_models import adapter_folder, resolve_model

    try:
        resolved = resolve_model(path)
    except UserError as e:
        raise UserError(f"{role}: {e}") from None
    if not Path(resolved).exists() and Path(resolved).is_absolute():
        raise UserError(f"{role} {path}: no such directory")
    adapter = adapter_folder(resolved)
    if adapter is not None:
        check_reward_adapter(adapter, path)
        return {}
    try:
        config = AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        raise UserError(f"{role} {path}: not a model directory ({str(e).splitlines()[0]})") from None
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(
            f"{role} {path}: {', '.join(architectures) or 'this model'} is not a sequence classifier; "
            "a reward model is trained with `prefloop reward train` (AutoModelForSequenceClassification, num_labels=1)"
        )
    if config.num_labels != 1:
        raise UserError(f"{role} {path}: has {config.num_labels} outputs; a reward model has exactly one")
    return model_info(resolved)


def warn_if_judge_is_reward_model(reward_model: str | None, judge: str | None) -> None:
    if reward_model and judge and Path(reward_model).resolve() == Path(judge).resolve():
        warn(f"judge {judge} is the training reward model: its win rate is no independent check "
             "of reward hacking (train the judge on a disjoint split)")


def load_scorer(path: str, device: str | None = None, batch_size: int = 16,
                role: str = "reward model (--reward-model)") -> RewardScorer:
    """reward/'s RewardScorer for one reward model, after checking that it is one (`role`: as reward_model_info)."""
    reward_model_info(path, role)
    return RewardScorer(path, device=device, batch_size=batch_size)


def score(scorer: RewardScorer, conversations: Sequence[Conversation]) -> list[float]:
    return scorer.score(conversations).mean.tolist()


class RewardFunction:
    """TRL reward-function signature over a RewardScorer: prompt + completion messages in, rewards out."""

    def __init__(self, scorer: RewardScorer) -> None:
        self.scorer = scorer
        self.__name__ = "reward_model"  # TRL names its logged metric after this

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        # Read as the reward model's training pairs are: a prompt string in HH's layout is the turns it holds.
        return score(self.scorer, [as_messages(p, f"prompt {i}", "prompt", "user")
                                   + as_messages(c, f"completion {i}", "completion", "assistant")
                                   for i, (p, c) in enumerate(zip(prompts, completions))])


class LengthPenalty:
    """`-weight * tokens`: a reward for brevity that counters reward models that favour long answers."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.__name__ = "length_penalty"

    def __call__(self, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        return [-self.weight * len(ids) for ids in completion_ids]

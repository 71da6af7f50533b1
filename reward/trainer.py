"""prefloop's RewardTrainer: TRL's `RewardTrainer`, its loss and metrics unchanged, with two additions.

- Batches from `reward.shared_prompt.SharedPromptCollator` (a pair packed as one sequence whose prompt runs once)
  get their rewards from `pair_rewards`; TRL's own batches go through TRL's path.
- Each held-out evaluation writes which pairs the model ranks right (chosen above rejected) into
  `held_out_outcomes`, one bool per pair, in the same order at every evaluation, so the step choice can compare
  two steps on the same pairs (`reward.train.keeps_latest`). The logged `eval_accuracy` is the share of those
  pairs ranked right, each pair counting once, so the progress bar, the log history, the summary and the step
  choice show one number; TRL's own figure is the mean of per-batch accuracies, which weighs a short last batch
  like a full one.

The order is the evaluation dataloader's, which Transformers builds afresh at each evaluation. A length-grouped
sampler shuffles its groups, so `_get_eval_sampler` gives it a generator seeded the same way each time: Transformers
does that itself from 5.16 on, earlier releases drew from the global random state. Under `accelerate launch` every
rank then draws the same order, so the shards agree. A test checks the order repeats.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import RewardTrainer

from reward.shared_prompt import pair_rewards


class PrefloopRewardTrainer(RewardTrainer):
    def __init__(self, *args, held_out_outcomes: list[bool] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # A list the caller owns (the step-choice callback reads it); filled in place at each evaluation.
        self.held_out_outcomes = held_out_outcomes if held_out_outcomes is not None else []

    def evaluate(self, *args, **kwargs):
        self.held_out_outcomes.clear()
        return super().evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # An evaluation's log, not the closing training log that Trainer writes with the model still in eval mode.
        if not self.model.training and self._metrics["eval"].get("accuracy") and self.held_out_outcomes:
            # TRL's log() averages what compute_loss appended per batch: one value makes the mean that value.
            self._metrics["eval"]["accuracy"] = [sum(self.held_out_outcomes) / len(self.held_out_outcomes)]
        super().log(logs, start_time)

    def _get_eval_sampler(self, eval_dataset):
        sampler = super()._get_eval_sampler(eval_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler.generator = torch.Generator().manual_seed(seed)
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "pair_mask" in inputs:  # a batch where some pair packs (SharedPromptCollator)
            packed_model = model

            def model(**batch) -> SequenceClassifierOutput:
                # fp32 like the outputs of the model's forward under mixed precision (Accelerate converts those).
                return SequenceClassifierOutput(logits=pair_rewards(packed_model, **batch)[:, None].float())

        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if not self.model.training:
            with torch.no_grad():
                chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
                self.held_out_outcomes.extend(self.accelerator.gather_for_metrics(chosen > rejected).tolist())
        return (loss, outputs) if return_outputs else loss

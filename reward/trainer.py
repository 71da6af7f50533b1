"""prefloop's RewardTrainer: TRL's `RewardTrainer`, its loss and metrics unchanged, with two additions.

- Batches from `reward.shared_prompt.SharedPromptCollator` (a pair packed as one sequence whose prompt runs once)
  get their rewards from `pair_rewards`; TRL's own batches go through TRL's path.
- Each held-out evaluation writes which pairs the model ranks right (chosen above rejected) into
  `held_out_outcomes`, one bool per pair in the held-out dataset's row order, so the step choice can compare two
  steps on the same pairs, and group them by prompt (`reward.train.keeps_latest`). The logged `eval_accuracy` is
  the share of those pairs ranked right, each pair counting once, so the progress bar, the log history, the
  summary and the step choice show one number; TRL's own figure is the mean of per-batch accuracies, which weighs
  a short last batch like a full one.

The evaluation dataloader reads the pairs grouped by length, not in row order. `_get_eval_sampler` draws that order
once per evaluation and hands the dataloader the drawn list, so the outcomes, which arrive in it, can be put back in
row order. Under `accelerate launch` the ranks take turns at its batches and `gather_for_metrics` puts them back in
turn, so the gathered outcomes arrive in the same order. Each rank draws it from a generator seeded the same way
(Transformers does that itself from 5.16 on; earlier releases drew from the global random state), so the ranks'
shards agree. A test checks the outcomes against the saved model's scores, row by row.
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
        self.held_out_order: list[int] = []  # the rows in the order the last evaluation read them

    def evaluation_loop(self, *args, **kwargs):
        self.held_out_outcomes.clear()
        output = super().evaluation_loop(*args, **kwargs)
        # Before `evaluate` logs the accuracy and the callbacks read the outcomes.
        order = self.held_out_order
        if len(order) != len(self.held_out_outcomes) or sorted(order) != list(range(len(order))):
            raise RuntimeError(f"held-out evaluation ranked {len(self.held_out_outcomes)} pairs, not each of the "
                               f"{len(order)} once")
        in_row_order = [False] * len(order)
        for row, outcome in zip(order, self.held_out_outcomes):
            in_row_order[row] = outcome
        self.held_out_outcomes[:] = in_row_order
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # An evaluation's log, not the closing training log that Trainer writes with the model still in eval mode.
        if not self.model.training and self._metrics["eval"].get("accuracy") and self.held_out_outcomes:
            # TRL's log() averages what compute_loss appended per batch: one value makes the mean that value.
            self._metrics["eval"]["accuracy"] = [sum(self.held_out_outcomes) / len(self.held_out_outcomes)]
        super().log(logs, start_time)

    def _get_eval_sampler(self, eval_dataset) -> list[int]:
        sampler = super()._get_eval_sampler(eval_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler.generator = torch.Generator().manual_seed(seed)
        self.held_out_order = list(sampler) if sampler is not None else list(range(len(eval_dataset)))
        return self.held_out_order

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

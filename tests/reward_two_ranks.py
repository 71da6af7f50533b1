"""Run by tests/test_reward.py under `torchrun --nproc_per_node 2`: reward training on two CPU ranks.

Arguments: DATA BASE OUT WAY, WAY being `shared` (pairs packed, their prompt run once) or `apart` (two sequences a
pair). Rank 1 alone believes its time budget is spent after the first step (a clock that crossed the budget a
step before the others); the ranks must still stop on the same step, the one rank 0 decides.
"""

import os
import sys

from reward.train import RewardTrainingConfig, train_reward_model

data, base, out, way = sys.argv[1:5]
budget = 1e-4 if os.environ["RANK"] == "1" else 1e6
train_reward_model(RewardTrainingConfig(data=data, base_model=base, output_dir=out, max_length=48,
                                        learning_rate=3e-3, precision="fp32", time_budget_s=budget,
                                        share_prompt=way == "shared", progress=False))

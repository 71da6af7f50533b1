"""Run by tests/test_reward.py under two CPU ranks (torchrun, or `accelerate launch` with DeepSpeed): `prefloop
reward train`, as a user launches it, on each rank.

Arguments: DATA BASE OUT WAY, WAY being `shared` (pairs packed, their prompt run once) or `apart` (two sequences a
pair). Rank 1 alone believes its time budget is spent after the first step (a clock that crossed the budget a
step before the others); the ranks must still stop on the same step, the one rank 0 decides. WAY `until-ctrl-c`
trains for 10,000 epochs with no budget: the test stops it with Ctrl-C. WAY `accumulate` trains 2 steps of 2
accumulated batches each. WAY `row-order` trains through the Python
API instead, at a learning rate too small to change a ranking (so the outcomes stay a mix), and writes the kept
step's held-out outcomes, as rank 0 gathered them, to OUT.outcomes.json.
"""

import json
import os
import sys

from apps.cli import main

data, base, out, way = sys.argv[1:5]
if way == "row-order":
    from reward.train import RewardTrainingConfig, train_reward_model

    result = train_reward_model(RewardTrainingConfig(
        data=data, base_model=base, output_dir=out, max_length=48, learning_rate=1e-12, max_steps=4,
        evals_per_epoch=1, eval_batch_size=2, precision="fp32", progress=False))
    if os.environ["RANK"] == "0":
        kept = next(e for e in result.evaluations if e["step"] == result.best_step)
        with open(f"{out}.outcomes.json", "w") as f:
            json.dump(kept["correct"], f)
    # As the CLI does on its way out: left to the interpreter's teardown, a rank can die with SIGABRT.
    from apps.cli import leave_process_group

    leave_process_group()
    sys.exit(0)
budget = "0.0001" if os.environ["RANK"] == "1" else "1000000"
until = {"until-ctrl-c": ["--epochs", "10000"], "accumulate": ["--max-steps", "2", "--gradient-accumulation-steps", "2"]
         }.get(way, ["--time-budget", budget])
sys.argv = ["prefloop", "reward", "train", "--data", data, "--base", base, "--out", out, "--max-length", "48",
            "--learning-rate", "3e-3", "--precision", "fp32", *until,
            *(["--no-share-prompt"] if way == "apart" else [])]
main()

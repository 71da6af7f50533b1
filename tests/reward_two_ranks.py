"""Run by tests/test_reward.py under two CPU ranks (torchrun, or `accelerate launch` with DeepSpeed): `prefloop
reward train`, as a user launches it, on each rank.

Arguments: DATA BASE OUT WAY, WAY being `shared` (pairs packed, their prompt run once) or `apart` (two sequences a
pair). Rank 1 alone believes its time budget is spent after the first step (a clock that crossed the budget a
step before the others); the ranks must still stop on the same step, the one rank 0 decides.
"""

import os
import sys

from apps.cli import main

data, base, out, way = sys.argv[1:5]
budget = "0.0001" if os.environ["RANK"] == "1" else "1000000"
sys.argv = ["prefloop", "reward", "train", "--data", data, "--base", base, "--out", out, "--max-length", "48",
            "--learning-rate", "3e-3", "--precision", "fp32", "--time-budget", budget,
            *(["--no-share-prompt"] if way == "apart" else [])]
main()

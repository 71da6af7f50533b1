"""Run by tests/test_finetune.py under two CPU ranks (torchrun): best-of-n's sampling shared between them.

Arguments: POLICY REWARD PROMPTS OUT WAY (PROMPTS: JSON lines, a `prompt` string each).
- WAY `rows`: `best_responses` through the Python API. Rank 1 alone believes the time budget spent (a clock that
  crossed it before rank 0's); rank 0 decides, so sampling goes on. Each rank writes OUT.rankR.json: the prompt
  indices it sampled itself, the rows and stats it got back, and why sampling stopped (null: it did not).
- WAY `budget`: `prefloop align --method bon` as a user runs it, rank 0's budget spent at once: both ranks stop
  sampling after the first round, train one step and save.
"""

import json
import os
import sys

policy, reward, prompts_path, out, way = sys.argv[1:6]
rank = os.environ["RANK"]
prompts = [json.loads(line)["prompt"] for line in open(prompts_path)]
if way == "rows":
    import finetune.best_of_n
    from finetune.align import AlignConfig
    from finetune.policy import load_policy
    from finetune.rewards import load_scorer
    from finetune.training import pick_device
    from reward.progress import StopEarly

    sampled_here: list[int] = []
    sample = finetune.best_of_n.sample

    def recording_sample(*args, **kwargs):
        samples = sample(*args, **kwargs)
        sampled_here.extend(samples.indices)
        return samples

    finetune.best_of_n.sample = recording_sample
    config = AlignConfig(prompts=prompts, output_dir=out, method="bon", policy=policy, reward_model=reward,
                         num_generations=4, temperature=1.0, max_completion_length=12)
    model, tokenizer = load_policy(policy)
    stop = StopEarly(0.0 if rank == "1" else 1e6)
    stop.begin("sampling batch")
    rows, stats = finetune.best_of_n.best_responses(
        config, model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
        load_scorer(reward, device=pick_device()), stop.stop_sampling)
    stop.release()
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"sampled_here": sampled_here, "rows": rows, "stats": stats, "stopped": stop.reason}, f)
    # As the CLI does on its way out: left to the interpreter's teardown, a rank can die with SIGABRT.
    from apps.cli import leave_process_group
    from finetune.training import process_state

    process_state().wait_for_everyone()
    leave_process_group()
    sys.exit(0)

from apps.cli import main  # noqa: E402

budget = "0.0001" if rank == "0" else "1000000"
sys.argv = ["prefloop", "align", "--method", "bon", "--policy", policy, "--reward-model", reward, "--prompts",
            prompts_path, "--out", out, "--max-steps", "4", "--num-generations", "4", "--max-completion-length", "12",
            "--learning-rate", "0.05", "--time-budget", budget]
main()

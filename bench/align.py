"""Benchmark: the four alignment methods on smollm2-135m-instruct, judged by a reward model it never saw.

    .venv/bin/python bench/align.py            # the full run (about 1.5 hours on 2 CPU cores)
    .venv/bin/python bench/align.py --quick    # a smoke run: tiny splits, 2 steps per method
    .venv/bin/python bench/align.py --methods grpo,dpo

Data: the HH-RLHF harmless-base file (../shared/data/hh_harmless_base_test.jsonl.gz, the only HH split
shipped), read with collect.formats. Pairs are grouped by their first user turn and the groups shuffled
(seed 0), so no prompt lands in two parts:
- part A (900 pairs): trains the reward model (`minilm-l6`, reward.train defaults) and is DPO's data
  (DPO trains without the reward model; it is evaluated like the others);
- part B (900 pairs): trains the independent judge (same recipe, seed 1), which alignment never sees;
- the rest: prompts for the policy: 256 to align on, 64 held out for the evaluation.

Each method runs with its default settings (finetune.align.METHOD_DEFAULTS) and is then evaluated
with finetune.evaluate on the held-out prompts (same seeds for base and aligned): win rate of aligned
over base under the training reward model and under the judge (95% bootstrap intervals), KL to the
base, mean response length. Wall time = the alignment run (data, sampling, training, saving).
Target (issue 6): the best method at >= 60% win rate under the judge within 30 minutes of CPU.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import machine, results_file  # noqa: E402  (bench/common.py: one description of the machine)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HH_FILE = ROOT.parent / "shared" / "data" / "hh_harmless_base_test.jsonl.gz"
RESULTS = ROOT / "bench" / "results" / "align.md"
METHODS = ("grpo", "rloo", "dpo", "bon")


def hh_parts(n_rm: int, n_judge: int, n_train_prompts: int, n_eval_prompts: int, seed: int = 0):
    """(reward-model pairs, judge pairs, training prompts, held-out prompts), disjoint by first user turn."""
    from collect.formats import read_records

    groups: dict[str, list] = {}
    for record in read_records(HH_FILE, "hh-rlhf"):
        groups.setdefault(record.prompt[0]["content"].strip().lower(), []).append(record)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    parts: list[list] = [[], [], []]
    sizes = (n_rm, n_judge, n_train_prompts + n_eval_prompts)
    part = 0
    for key in keys:
        while part < 3 and len(parts[part]) >= sizes[part]:
            part += 1
        if part == 3:
            break
        parts[part].extend(groups[key])
    rm_pairs, judge_pairs = (as_preferences(p) for p in parts[:2])
    prompts = [r.prompt for r in parts[2]]
    return rm_pairs, judge_pairs, prompts[:n_train_prompts], prompts[n_train_prompts:n_train_prompts + n_eval_prompts]


def as_preferences(records) -> list[dict]:
    """HH records (chosen = response_a) as TRL conversational preference rows."""
    return [{"prompt": r.prompt, "chosen": [{"role": "assistant", "content": r.response_a}],
             "rejected": [{"role": "assistant", "content": r.response_b}]} for r in records]


def train_reward(pairs: list[dict], out: Path, seed: int, quick: bool) -> dict:
    from reward.train import RewardTrainingConfig, train_reward_model

    if (out / "prefloop.json").exists():  # reuse across reruns of the benchmark
        return json.loads((out / "prefloop.json").read_text()).get("metrics", {})
    result = train_reward_model(RewardTrainingConfig(
        data=pairs, base_model="minilm-l6", output_dir=str(out), seed=seed,
        max_steps=5 if quick else -1, progress=not quick,
    ))
    return result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny splits and 2 steps per method (a smoke run)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of grpo,rloo,dpo,bon")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_align"), help="reward models and adapters")
    parser.add_argument("--out", default=None, help=f"markdown table to write (default {RESULTS.relative_to(ROOT)}; "
                        "quick runs write into --work)")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    command = "python bench/align.py " + " ".join(sys.argv[1:])

    sizes = (40, 40, 8, 8) if args.quick else (900, 900, 256, 64)
    rm_pairs, judge_pairs, train_prompts, eval_prompts = hh_parts(*sizes)
    print(f"reward-model pairs {len(rm_pairs)}, judge pairs {len(judge_pairs)}, "
          f"prompts {len(train_prompts)} to align on, {len(eval_prompts)} held out", flush=True)
    started = time.monotonic()
    rm_metrics = train_reward(rm_pairs, work / "rm", 0, args.quick)
    judge_metrics = train_reward(judge_pairs, work / "judge", 1, args.quick)
    print(f"reward models ready after {time.monotonic() - started:.0f} s", flush=True)

    from finetune.align import AlignConfig, align

    rows = []
    for method in methods:
        overrides = dict(max_steps=2, max_completion_length=16) if args.quick else {}
        # dpo trains on the reward model's preference pairs, the others on prompts.
        training_data = {"data": rm_pairs} if method == "dpo" else {"prompts": train_prompts}
        config = AlignConfig(
            **training_data, output_dir=work / method, method=method,
            reward_model=str(work / "rm"), eval_prompts=eval_prompts,
            judge=str(work / "judge"), **overrides,
        )
        result = align(config)
        e = result.evaluation
        rows.append({
            "method": method, "steps": config.max_steps, "lr": config.learning_rate, "beta": config.beta,
            "wall_s": result.metrics["wall_s"], **e,
        })
        (work / "results.json").write_text(json.dumps(rows, indent=2, default=str))
        del result
        gc.collect()
        print(json.dumps(rows[-1], default=str)[:600], flush=True)
    out = results_file(args.out, args.quick, RESULTS, work)
    write_table(rows, rm_metrics, judge_metrics, sizes, command, out, args.quick)


def write_table(rows, rm_metrics, judge_metrics, sizes, command, out: Path, quick: bool) -> None:
    def ci(row, role):
        if row.get(f"win_rate_{role}") is None:
            return "n/a"
        low, high = row[f"win_rate_{role}_ci95"]
        return f"{row[f'win_rate_{role}']:.0%} [{low:.0%}, {high:.0%}]"

    def acc(m):
        return next((f"{v:.3f}" for k, v in m.items() if "accuracy" in k and isinstance(v, float)), "n/a")

    lines = [
        "# Alignment methods on smollm2-135m-instruct" + (" (QUICK smoke run, not a result)" if quick else ""),
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        f"- data: {HH_FILE.name} (HH-RLHF harmless-base), split by first user turn (seed 0): "
        f"{sizes[0]} pairs for the reward model (also DPO's data), {sizes[1]} for the judge, "
        f"{sizes[2]} prompts to align on, {sizes[3]} held-out prompts",
        f"- reward model: minilm-l6, reward.train defaults, held-out accuracy {acc(rm_metrics)}; "
        f"judge: same recipe on the disjoint part, held-out accuracy {acc(judge_metrics)}",
        "- evaluation: one sample per prompt from base and aligned with the same seeds (temperature 0.7, "
        "64 new tokens); win rate = share of prompts where aligned scores higher (ties 1/2), 95% expanded percentile "
        "bootstrap interval over prompts (as reward eval); "
        "KL(aligned || base) in nats per response, on the aligned model's samples",
        "",
        "| method | steps | lr | beta | wall time | win rate, reward model | win rate, judge | KL | "
        "length base -> aligned | mean reward (judge) base -> aligned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['lr']:g} | {r['beta']:g} | {r['wall_s'] / 60:.1f} min | "
            f"{ci(r, 'reward_model')} | {ci(r, 'judge')} | {r['kl_to_base']:.2f} | "
            f"{r['mean_length_base']:.0f} -> {r['mean_length_aligned']:.0f} | "
            f"{r['mean_reward_judge_base']:.2f} -> {r['mean_reward_judge_aligned']:.2f} |"
        )
    best = max(rows, key=lambda r: r["win_rate_judge"]) if rows else None
    if best:
        met = best["win_rate_judge"] >= 0.6 and best["wall_s"] <= 1800
        lines += ["", f"Best under the judge: **{best['method']}** at {best['win_rate_judge']:.0%} in "
                      f"{best['wall_s'] / 60:.1f} min; target (>= 60% within 30 min): {'met' if met else 'NOT met'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()

"""Benchmark: scoring preference pairs with a decoder reward model, the conversations that share a prompt packed
into one sequence with the prompt run once (`RewardScorer.score_pairs`, the default: `prompt_groups`) against
every conversation scored alone (`share_prompt=False`), in the same run.

    .venv/bin/python bench/reward_score.py            # about 10 minutes on 2 CPU cores
    .venv/bin/python bench/reward_score.py --quick    # a smoke run: 16 pairs, max length 256 only

`smollm2-135m-instruct` loaded for sequence classification (one label; the head drawn with seed 0: the speed does
not depend on what it learned) and saved as a reward-model directory scores the first `--pairs` test pairs of
bench/reward.py's HH harmless and summarize splits at max lengths 256 and 1,024, both ways, each in its own
subprocess (so its peak memory is its own), on the CPU in fp32 (RewardScorer's CPU precision). Reported: how many
of the conversations run packed, tokens a pair costs, pairs per second, peak RSS, and the largest difference
between the two ways' rewards.
"""

from __future__ import annotations

import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import command, machine, peak_rss_gb, write_report  # noqa: E402
from bench.reward import hh_split, summarize_split  # noqa: E402
from bench.reward_shared_prompt import both_ways, parse_arguments, speed_cells  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reward_score.md"
BASE = "smollm2-135m-instruct"
TEST_PAIRS = {"hh": lambda: hh_split()[1], "summarize": lambda: summarize_split()[1]}


def reward_model_directory(out: Path) -> None:
    """`BASE` with a one-output score head, saved where RewardScorer can load it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from collect.offline_models import resolve_model
    from reward.models import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(resolve_model(BASE))
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(BASE), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def worker(model_dir: str, data: str, max_length: int, share: bool, batch_size: int) -> dict:
    import datasets

    from reward.score import RewardScorer

    pairs = datasets.Dataset.from_parquet(data)
    scorer = RewardScorer(model_dir, device="cpu", batch_size=batch_size, max_length=max_length, share_prompt=share)
    started = time.perf_counter()
    chosen, rejected = scorer.score_pairs(pairs)
    seconds = time.perf_counter() - started
    return {"pairs_per_second": len(pairs) / seconds, "shared_prompt": scorer.members[0].shares_prompt,
            "rewards": [*chosen.mean.tolist(), *rejected.mean.tolist()],
            "peak_rss_gb": peak_rss_gb()}


def main() -> None:
    args = parse_arguments(__doc__.split("\n\n")[0], 96, "test pairs scored (the first N of each split)", 16,
                           "RewardScorer's batch size (sequences)", RESULTS, ("MODEL", "DATA", "MAX_LENGTH", "BATCH"))
    if args.worker:
        model_dir, data, max_length, batch, share, result = args.worker
        Path(result).write_text(json.dumps(worker(model_dir, data, int(max_length), share == "shared", int(batch))))
        return
    import datasets

    from reward.data import Encoder
    from reward.score import distinct_sequences
    from reward.shared_prompt import prompt_groups, row_tokens
    from reward.models import load_tokenizer

    started = datetime.datetime.now().astimezone()
    where = machine()
    work = Path(tempfile.mkdtemp(prefix="prefloop-bench-reward-score-"))
    model_dir = work / "rm"
    reward_model_directory(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    rows = []
    for name in args.datasets.split(","):
        pairs = datasets.Dataset.from_list(TEST_PAIRS[name]()[:args.pairs])
        data = str(work / f"{name}.parquet")
        pairs.to_parquet(data)
        for max_length in [int(x) for x in args.max_lengths.split(",")]:
            # What RewardScorer runs: each conversation cut alone (align=False), each distinct one once (either
            # way), grouped when shared.
            encoded, _ = Encoder(tokenizer, max_length).encode_pairs(pairs, align=False)
            sequences, _ = distinct_sequences([*encoded["chosen_ids"], *encoded["rejected_ids"]])
            groups = [[sequences[i] for i in g] for g in prompt_groups(sequences)]
            tokens_apart = sum(map(len, sequences)) / len(pairs)
            tokens_shared = sum(map(row_tokens, groups)) / len(pairs)
            packed = sum(len(g) for g in groups if len(g) > 1)
            stats = both_ways(__file__, [str(model_dir), data, str(max_length), str(args.batch_size)], work)
            apart, shared = stats["apart"], stats["shared"]
            gap = max(abs(a - b) for a, b in zip(apart["rewards"], shared["rewards"]))
            rows.append(f"| {name} | {max_length} | {len(pairs)} | {len(sequences)} | {packed} | {tokens_apart:.0f} | "
                        f"{tokens_shared:.0f} | {speed_cells(apart, shared)} | {gap:.1e} |")
            print(rows[-1], flush=True)
    minutes = (datetime.datetime.now().astimezone() - started).total_seconds() / 60
    report = "\n".join([
        "# Scoring pairs with a decoder reward model: conversations that share a prompt packed, or each alone",
        "",
        f"- Command: `{command()}`",
        f"- Machine: {where}",
        f"- Started {started:%Y-%m-%d %H:%M %Z}, took {minutes:.0f} min",
        f"- Each run: `RewardScorer(...).score_pairs` on `{BASE}` with a one-output head, fp32 on the CPU, batches of "
        f"{args.batch_size} sequences ({args.batch_size // 2} packed rows), in its own subprocess.",
        "",
        "| data | max length | pairs | distinct conversations | packed | tokens/pair, apart | tokens/pair, shared "
        "| pairs/s, apart | pairs/s, shared | speed-up | peak RSS (apart / shared) | largest reward difference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The clock runs from the loaded model to the last reward (tokenizing included). Both ways score each distinct "
        "conversation once (summarize repeats summaries across a post's pairs). Conversations that share "
        "less than half the shorter one's tokens (truncated on both sides, so their starts no longer line up) are "
        "scored alone either way; where few pack, the two ways do the same work and their difference is this "
        "machine's run-to-run noise. Packed rows group every conversation of a prompt, not only a pair's two sides "
        "(summarize has several pairs per post), up to twice the longest one's tokens a row.",
        "",
    ])
    write_report(report, args.out, args.quick, RESULTS, work)


if __name__ == "__main__":
    main()

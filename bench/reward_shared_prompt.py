"""Benchmark: a decoder reward model trained with each pair's prompt run once (`share_prompt`, the default)
against chosen and rejected as two sequences, the prompt run twice (`share_prompt=False`), in the same run.

    .venv/bin/python bench/reward_shared_prompt.py            # about 20 minutes on 2 CPU cores
    .venv/bin/python bench/reward_shared_prompt.py --quick    # a smoke run: 16 pairs, max length 256 only

For each dataset (bench/reward.py's training pairs of HH harmless and summarize) and max length (256, the
default, and 1,024), `smollm2-135m-instruct` with LoRA (prefloop's decoder recipe, every layer adapted) trains
one epoch over the same `--pairs` pairs drawn at random (seeded) from the training pairs, in batches of
`--batch-size`, both ways, each run in its own subprocess (so its peak memory is its own), nothing held out,
seed 0. A random draw, not the first steps of a full run: the length-grouped sampler serves the longest pairs
first, which are the truncated ones that share nothing. Reported: the tokens a pair costs over all the training
pairs, pairs per second over the epoch, and peak RSS. The two ways compute the same rewards (tests/test_reward.py
checks it to 1e-5); bench/reward.py's side `prefloop-smollm2-20-two-sequences` compares them end to end, held-out
accuracy included.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import command, machine, peak_rss_gb, write_report  # noqa: E402
from bench.reward import TRAINING_PAIRS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reward_shared_prompt.md"
BASE = "smollm2-135m-instruct"


def worker(data: str, max_length: int, share: bool, align: bool, batch_size: int, out: str) -> dict:
    from reward.train import RewardTrainingConfig, train_reward_model

    result = train_reward_model(RewardTrainingConfig(
        data=data, base_model=BASE, lora=True, output_dir=out, max_length=max_length, share_prompt=share,
        align_truncation=align, eval_fraction=0.0, num_train_epochs=1, batch_size=batch_size, progress=False,
    ))
    return {"pairs_per_second": result.pairs_per_second, "train_seconds": result.train_seconds,
            "shared_prompt": result.shared_prompt,
            "train_loss": result.metrics["train_loss"],
            "peak_rss_gb": peak_rss_gb()}


def parse_arguments(description: str, pairs: int, pairs_help: str, batch_size: int, batch_help: str,
                    results: Path, worker: tuple[str, ...], training: bool = False) -> argparse.Namespace:
    """The options of this benchmark and of bench/reward_score.py, which time the two ways the same way: the
    hidden `--worker` takes `worker`'s arguments, then the way (`apart` or `shared`) and the result file.
    `training` adds --no-align-truncation (scoring always cuts each conversation alone)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--pairs", type=int, default=pairs, help=pairs_help)
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    parser.add_argument("--max-lengths", default="256,1024")
    parser.add_argument("--datasets", default="hh,summarize")
    parser.add_argument("--quick", action="store_true", help="16 pairs, max length 256: a smoke run")
    if training:
        parser.add_argument("--no-align-truncation", action="store_true",
                            help="cut each side of an over-long pair alone (default: both lose the same prompt tokens)")
    parser.add_argument("--out", help=f"the Markdown results file (default: bench/results/{results.name}; a --quick "
                        "run writes into its work folder)")
    parser.add_argument("--worker", nargs=len(worker) + 2, metavar=(*worker, "WAY", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.max_lengths = 16, "256"
    return args


def both_ways(script: str, worker_arguments: list[str], work: Path) -> dict[str, dict]:
    """`script`'s worker run apart and shared, each in its own subprocess (so its peak memory is its own): the
    result of each way, which says whether it packed (`shared_prompt`)."""
    stats = {}
    for way in ("apart", "shared"):
        result = work / "result.json"
        subprocess.run([sys.executable, script, "--worker", *worker_arguments, way, str(result)], check=True)
        stats[way] = json.loads(result.read_text())
    assert stats["shared"]["shared_prompt"] and not stats["apart"]["shared_prompt"]
    return stats


def speed_cells(apart: dict, shared: dict) -> str:
    """The table cells both benchmarks report: pairs per second each way, the speed-up, peak RSS each way."""
    return (f"{apart['pairs_per_second']:.2f} | {shared['pairs_per_second']:.2f} | "
            f"**{shared['pairs_per_second'] / apart['pairs_per_second']:.2f}x** | "
            f"{apart['peak_rss_gb']:.2f} / {shared['peak_rss_gb']:.2f} GiB")


def main() -> None:
    args = parse_arguments(__doc__.split("\n\n")[0], 48, "pairs drawn at random; each run trains one epoch", 8,
                           "pairs per step", RESULTS, ("DATA", "MAX_LENGTH", "BATCH", "ALIGN"), training=True)
    if args.worker:
        data, max_length, batch, align, share, result = args.worker
        with tempfile.TemporaryDirectory() as out:
            stats = worker(data, int(max_length), share == "shared", align == "aligned", int(batch), out)
        Path(result).write_text(json.dumps(stats))
        return
    import random

    import datasets

    from collect.offline_models import resolve_model
    from reward.data import Encoder
    from reward.shared_prompt import tokens_per_pair
    from reward.models import load_tokenizer

    tokenizer = load_tokenizer(resolve_model(BASE))

    started = datetime.datetime.now().astimezone()
    where = machine()
    work = Path(tempfile.mkdtemp(prefix="prefloop-bench-shared-prompt-"))
    rows = []
    for name in args.datasets.split(","):
        pairs = datasets.Dataset.from_list(TRAINING_PAIRS[name]())
        data = str(work / f"{name}.parquet")
        pairs.select(sorted(random.Random(0).sample(range(len(pairs)), args.pairs))).to_parquet(data)
        for max_length in [int(x) for x in args.max_lengths.split(",")]:
            encoded, _ = Encoder(tokenizer, max_length).encode_pairs(pairs, align=not args.no_align_truncation)
            tokens_apart, tokens_shared = tokens_per_pair(encoded, False), tokens_per_pair(encoded, True)
            align = "each-alone" if args.no_align_truncation else "aligned"
            stats = both_ways(__file__, [data, str(max_length), str(args.batch_size), align], work)
            two, shared = stats["apart"], stats["shared"]
            rows.append(f"| {name} | {max_length} | {tokens_apart:.0f} | {tokens_shared:.0f} | "
                        f"{speed_cells(two, shared)} | {two['train_loss']:.4f} / {shared['train_loss']:.4f} |")
            print(rows[-1], flush=True)
    minutes = (datetime.datetime.now().astimezone() - started).total_seconds() / 60
    report = "\n".join([
        "# Reward training on a decoder: the prompt run once per pair, or twice",
        "",
        f"- Command: `{command()}`",
        f"- Machine: {where}",
        f"- Started {started:%Y-%m-%d %H:%M %Z}, took {minutes:.0f} min",
        f"- Each run: `{BASE}` with LoRA (prefloop's defaults otherwise: bf16 where the CPU has bf16 units), "
        f"one epoch over {args.pairs} pairs drawn at random (seeded) from bench/reward.py's training pairs, batches of "
        f"{args.batch_size}, nothing held out, seed 0, in its own subprocess; over-long pairs "
        + ("cut each side alone (`align_truncation=False`)." if args.no_align_truncation else
           "lose the same prompt tokens on both sides (`align_truncation`, the default)."),
        "",
        "| data | max length | tokens/pair, two sequences | tokens/pair, shared | pairs/s, two sequences "
        "| pairs/s, shared | speed-up | peak RSS (two / shared) | train loss (two / shared) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Tokens per pair are over all the training pairs; pairs per second over the epoch (its first step includes "
        "warm-up). The two ways compute the same rewards; their batches differ (shared-prompt runs group pairs by "
        "packed length), hence the train losses.",
        "",
    ])
    write_report(report, args.out, args.quick, RESULTS, work)


if __name__ == "__main__":
    main()

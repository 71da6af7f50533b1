"""Leaderboard check on real data: the four AlpacaEval models must rank in their AlpacaEval win-rate order.

Data: ../shared/data/alpaca_eval/<model>.annotations.json, read with collect.formats (the importer's own
parser). Each item is one judgment by the GPT-4 judge of a model's answer (output_2) against the reference
text_davinci_003 (output_1) on the same instruction; 805 items per model.

AlpacaEval's win-rate is the share of items where the model's answer is preferred, a draw counting half;
it is computed here straight from the files' `preference` field, independently of collect.leaderboard.
Bradley-Terry (collect.leaderboard.bradley_terry) is fitted on all four files at once, with a 95% bootstrap
interval; Elo is shown for comparison, in a random order (the files carry no times) with its spread over
100 orders, and in file order (model by model), which shows why Elo is not the headline number.

Run: .venv/bin/python bench/leaderboard.py [--plot PATH]   (writes bench/results/leaderboard.md)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine  # noqa: E402  (bench/common.py: one description of the machine)

from collect.defaults import N_BOOTSTRAP  # noqa: E402
from collect.formats import read_records  # noqa: E402
from collect.leaderboard import bradley_terry, elo, plot_leaderboard, win_rate_matrix  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "alpaca_eval"
REFERENCE = "text_davinci_003"


def judgments() -> pd.DataFrame:
    """One row per judged AlpacaEval item, through the importer's parser; file order kept."""
    rows = []
    for path in sorted(DATA.glob("*.annotations.json")):
        for record in read_records(path):
            for judged in record.judgments:
                rows.append({"pair_id": len(rows), "rater_id": 0, "choice": judged.choice,
                             "model_a": record.model_a, "model_b": record.model_b})
    return pd.DataFrame(rows)


def alpaca_eval_win_rates() -> pd.Series:
    """AlpacaEval's own number from the raw `preference` field: mean of (preference - 1), a draw (0) = 0.5."""
    rates = {}
    for path in sorted(DATA.glob("*.annotations.json")):
        items = json.loads(path.read_text())
        prefs = [x["preference"] for x in items if x.get("preference") is not None]
        rates[items[0]["generator_2"]] = float(np.mean([0.5 if p == 0 else p - 1 for p in prefs]))
    return pd.Series(rates).sort_values(ascending=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, help="also save the ratings plot here (PNG, SVG or PDF)")
    args = parser.parse_args()
    command = "python bench/leaderboard.py" + (f" --plot {args.plot}" if args.plot else "")

    df = judgments()
    official = alpaca_eval_win_rates()
    start = time.perf_counter()
    board = bradley_terry(df, n_bootstrap=N_BOOTSTRAP, seed=0)
    bt_seconds = time.perf_counter() - start
    shuffled = df.sample(frac=1.0, random_state=0)  # the files carry no times: a random order for Elo
    elo_random = elo(shuffled, k=4.0, n_orders=100, seed=0).set_index("model")
    elo_file = elo(df, k=4.0).set_index("model")["elo"]
    matrix = win_rate_matrix(df)

    board = board.set_index("model")
    ref_rating = board.loc[REFERENCE, "rating"]
    table = pd.DataFrame({
        "AlpacaEval win-rate": official.reindex(board.index),
        "win-rate (collect)": matrix[REFERENCE].reindex(board.index),
        "BT rating": board["rating"],
        "BT 95% CI": pd.Series([f"[{lo:.0f}, {hi:.0f}]" for lo, hi in zip(board["ci_low"], board["ci_high"])],
                               index=board.index),
        "BT P(beats reference)": 1 / (1 + 10 ** ((ref_rating - board["rating"]) / 400)),
        "Elo (random order)": elo_random["elo"],
        "Elo 95% over orders": pd.Series([f"[{lo:.0f}, {hi:.0f}]" for lo, hi in
                                          zip(elo_random["elo_low"], elo_random["elo_high"])], index=elo_random.index),
        "Elo (file order)": elo_file,
        "judgments": board["n_games"],
    }).reindex(board.index)  # best first
    table.loc[REFERENCE, ["AlpacaEval win-rate", "win-rate (collect)", "BT P(beats reference)"]] = np.nan

    models = [m for m in board.index if m != REFERENCE]
    # The reference belongs between the models that beat it more often than not and those that do not.
    expected = list(official[official > 0.5].index) + [REFERENCE] + list(official[official <= 0.5].index)
    checks = {
        "Bradley-Terry": list(board.index),
        "Elo (random order)": list(elo_random.index),
        "Elo (file order)": list(elo_file.sort_values(ascending=False).index),
    }
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print(table.round(3).to_string())
    print()
    print("win-rate matrix (row model against column model):")
    print(matrix.round(3).to_string())
    print()
    print("AlpacaEval order (reference placed by win-rate above or below 50%):", " > ".join(expected))
    for name, order in checks.items():
        print(f"{name} order: {' > '.join(order)}  same: {order == expected}")

    lines = [
        "# Leaderboard: AlpacaEval models, Bradley-Terry vs AlpacaEval win-rates",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command}`",
        "- data: `../shared/data/alpaca_eval/*.annotations.json` (AlpacaEval v1 annotations by the GPT-4 judge; each "
        f"model against the reference {REFERENCE} on the same 805 instructions; {len(df)} judgments after dropping "
        "items with no preference), read with `collect.formats.read_records`",
        f"- Bradley-Terry: `collect.leaderboard.bradley_terry`, Elo scale (400, base 10, mean 1000), ties half a win, "
        f"95% percentile bootstrap over judgments with {N_BOOTSTRAP} replicates; fit + bootstrap took "
        f"{bt_seconds:.2f} s",
        "- Elo: `collect.leaderboard.elo`, K = 4, every model starting at 1000; the files have no times, so one "
        "random order (seed 0) with the 2.5-97.5% range over 100 random orders, and the files' own order "
        "(one model after another)",
        "- BT P(beats reference): the win-rate against the reference that the fitted ratings predict",
        "",
        "| model | AlpacaEval win-rate | win-rate (collect) | BT rating | BT 95% CI | BT P(beats reference) "
        "| Elo (random order) | Elo 95% over orders | Elo (file order) | judgments |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, r in table.iterrows():
        def pct(v: float) -> str:
            return "" if pd.isna(v) else f"{v:.1%}"

        lines.append(
            f"| {model} | {pct(r['AlpacaEval win-rate'])} | {pct(r['win-rate (collect)'])} | {r['BT rating']:.1f} "
            f"| {r['BT 95% CI']} | {pct(r['BT P(beats reference)'])} | {r['Elo (random order)']:.1f} "
            f"| {r['Elo 95% over orders']} | {r['Elo (file order)']:.1f} | {r['judgments']} |"
        )
    lines += ["", "Win-rate matrix (row model against column model; only pairs with the reference were judged):", "",
              "| | " + " | ".join(matrix.columns) + " |", "|---" * (len(matrix.columns) + 1) + "|"]
    for model, r in matrix.iterrows():
        lines.append(f"| {model} | " + " | ".join("" if pd.isna(v) else f"{v:.3f}" for v in r) + " |")
    lines += ["", "## Check: same order as the AlpacaEval win-rates", "",
              f"- AlpacaEval win-rates (the reference goes between the models above and below 50%): "
              f"{' > '.join(expected)}"]
    for name, order in checks.items():
        lines.append(f"- {name}: {' > '.join(order)}: {'same order' if order == expected else 'DIFFERENT order'}")
    if checks["Elo (file order)"] != expected:
        lines += ["", "Elo in file order misplaces models: the files come one model after another, so the reference's "
                  "rating is still moving when the first models' games are over. Bradley-Terry uses no order."]
    gap = board.loc[models[0], "ci_low"] - board.loc[models[1], "ci_high"]
    lines += ["", f"The top two ({models[0]}, {models[1]}) are {abs(official.iloc[0] - official.iloc[1]):.1%} apart in "
              f"win-rate; their intervals {'overlap' if gap < 0 else 'do not overlap'}, so their order is "
              f"{'not statistically settled by these judgments' if gap < 0 else 'settled'}."]
    out = ROOT / "bench" / "results" / "leaderboard.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    if args.plot:
        plot_leaderboard(board.reset_index()).savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()

"""Model leaderboard from pairwise judgments: Bradley-Terry with bootstrap CIs, online Elo, win-rate matrix.

Modelled on Chatbot Arena's rating code: Bradley-Terry is the maximum-likelihood fit of
P(i beats j) = 1 / (1 + BASE ** ((R_j - R_i) / SCALE)), reported on the Elo scale (SCALE 400, BASE 10,
centred on 1000); a tie counts as half a win for each side, and the strength of a choice (A>>B vs A>B) does
not enter. Its interval is a percentile bootstrap over judgments. Elo is the online update in submission
order, kept for comparison: it depends on the order, Bradley-Terry does not.

Input: a judgments frame (collect.aggregate.JUDGMENT_COLUMNS) with model_a and model_b; judgments whose pair
has no model names, or the same model on both sides, carry no information about models and are dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from collect.aggregate import direction, validate_judgments
from collect.defaults import N_BOOTSTRAP
from collect.errors import UserError

SCALE = 400.0
BASE = 10.0
INIT_RATING = 1000.0


def model_games(judgments: pd.DataFrame) -> pd.DataFrame:
    """model_a, model_b, score (1 A won, 0.5 tie, 0 B won), in submission order where known."""
    df = validate_judgments(judgments, required=("model_a", "model_b"))
    if df["submitted_at"].notna().any():
        df = df.sort_values("submitted_at", kind="stable")
    named = df["model_a"].map(_named) & df["model_b"].map(_named)
    df = df[named & (df["model_a"] != df["model_b"])]
    if df.empty:
        raise UserError("judgments: no judgment compares two different named models (model_a, model_b)")
    return pd.DataFrame({
        "model_a": df["model_a"].astype(str).to_numpy(),
        "model_b": df["model_b"].astype(str).to_numpy(),
        "score": (direction(df["choice"]) + 1) / 2.0,
    })


def _named(model: object) -> bool:
    return isinstance(model, str) and model.strip() != ""


def _fit_strengths(wins: np.ndarray, ridge: float = 1e-6, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry log-strengths for a batch of win tables (B, M, M) by Newton's method.

    wins[b, i, j]: (fractional) wins of i over j. A tiny ridge fixes the arbitrary offset and keeps a model
    that never lost finite; the result is centred to mean 0.
    """
    n_batch, m, _ = wins.shape
    games = wins + wins.transpose(0, 2, 1)
    s = np.zeros((n_batch, m))
    eye = np.eye(m)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(s[:, None, :] - s[:, :, None]))  # p[b, i, j] = P(i beats j)
        grad = (wins - games * p).sum(axis=2) - ridge * s
        curvature = games * p * (1 - p)
        hessian = curvature - eye * (curvature.sum(axis=2)[:, :, None] + ridge)
        step = np.linalg.solve(hessian, -grad[:, :, None])[:, :, 0]
        # Newton on a concave likelihood; the cap only matters for a model that (almost) never lost.
        step = np.clip(step, -2.0, 2.0)
        s += step
        if np.abs(step).max() < tol:
            break
    return s - s.mean(axis=1, keepdims=True)


def _to_rating(strength: np.ndarray) -> np.ndarray:
    return INIT_RATING + SCALE * strength / np.log(BASE)


def bradley_terry(
    judgments: pd.DataFrame,
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = 0.95,
    anchor: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Bradley-Terry ratings: model, rating, ci_low, ci_high, n_games; best first.

    anchor: a model pinned at 1000 (say, your reference model); by default the mean rating is 1000.
    The interval resamples judgments with replacement `n_bootstrap` times and refits; each replicate is
    re-anchored the same way, so with an anchor the intervals are relative to that model.
    """
    games = model_games(judgments)
    models = sorted(set(games["model_a"]) | set(games["model_b"]))
    if anchor is not None and anchor not in models:
        raise UserError(f"anchor model {anchor!r} is not among the judged models: {', '.join(models)}")
    m = len(models)
    index = {name: i for i, name in enumerate(models)}
    a = games["model_a"].map(index).to_numpy()
    b = games["model_b"].map(index).to_numpy()
    # Each judgment adds `score` to wins[a, b] and `1 - score` to wins[b, a]: group identical games, then a
    # bootstrap replicate is a multinomial draw of how often each kind of game occurs.
    kinds, counts = np.unique(np.stack([a, b, games["score"].to_numpy() * 2]).T, axis=0, return_counts=True)
    ka, kb, kscore = kinds[:, 0].astype(int), kinds[:, 1].astype(int), kinds[:, 2] / 2.0

    def tables(weights: np.ndarray) -> np.ndarray:
        wins = np.zeros((len(weights), m, m))
        for kind in range(len(kinds)):
            wins[:, ka[kind], kb[kind]] += weights[:, kind] * kscore[kind]
            wins[:, kb[kind], ka[kind]] += weights[:, kind] * (1 - kscore[kind])
        return wins

    def ratings(weights: np.ndarray) -> np.ndarray:
        r = _to_rating(_fit_strengths(tables(weights)))
        if anchor is not None:
            r += INIT_RATING - r[:, [index[anchor]]]
        return r

    estimate = ratings(counts[None, :].astype(float))[0]
    rng = np.random.default_rng(seed)
    boot = (ratings(rng.multinomial(len(games), counts / len(games), size=n_bootstrap).astype(float))
            if n_bootstrap else None)
    tail = (1 - confidence) / 2 * 100
    low, high = (np.percentile(boot, [tail, 100 - tail], axis=0) if boot is not None
                 else (np.full(m, np.nan), np.full(m, np.nan)))
    n_games = np.bincount(np.concatenate([a, b]), minlength=m)
    board = pd.DataFrame({"model": models, "rating": estimate, "ci_low": low, "ci_high": high, "n_games": n_games})
    return board.sort_values("rating", ascending=False, ignore_index=True)


def elo(
    judgments: pd.DataFrame,
    k: float = 4.0,
    n_orders: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Online Elo ratings: model, elo (and elo_low, elo_high when n_orders > 0); best first.

    Games are played in submission order (the frame's order when unknown), every model starting at 1000.
    k: the update size (Chatbot Arena used 4). n_orders: also replay the games in that many random orders
    and report the spread, which shows how much Elo depends on the order.
    """
    games = model_games(judgments)
    models = sorted(set(games["model_a"]) | set(games["model_b"]))
    index = {name: i for i, name in enumerate(models)}
    a = games["model_a"].map(index).to_numpy()
    b = games["model_b"].map(index).to_numpy()
    score = games["score"].to_numpy()

    def play(order: np.ndarray) -> np.ndarray:
        rating = np.full(len(models), INIT_RATING)
        for g in order:
            expected = 1.0 / (1.0 + BASE ** ((rating[b[g]] - rating[a[g]]) / SCALE))
            rating[a[g]] += k * (score[g] - expected)
            rating[b[g]] -= k * (score[g] - expected)
        return rating

    board = pd.DataFrame({"model": models, "elo": play(np.arange(len(games)))})
    if n_orders:
        rng = np.random.default_rng(seed)
        replays = np.stack([play(rng.permutation(len(games))) for _ in range(n_orders)])
        tail = (1 - confidence) / 2 * 100
        board["elo_low"], board["elo_high"] = np.percentile(replays, [tail, 100 - tail], axis=0)
    return board.sort_values("elo", ascending=False, ignore_index=True)


def win_rate_matrix(judgments: pd.DataFrame) -> pd.DataFrame:
    """Square DataFrame: row model's share of wins against the column model (ties count half); NaN if never met."""
    games = model_games(judgments)
    models = sorted(set(games["model_a"]) | set(games["model_b"]))
    both = pd.concat([
        games.rename(columns={"model_a": "model", "model_b": "opponent"}),
        games.rename(columns={"model_b": "model", "model_a": "opponent"}).assign(score=lambda g: 1 - g["score"]),
    ])
    matrix = both.pivot_table(index="model", columns="opponent", values="score", aggfunc="mean")
    return matrix.reindex(index=models, columns=models)


def leaderboard(
    judgments: pd.DataFrame, n_bootstrap: int = N_BOOTSTRAP, anchor: str | None = None, elo_k: float = 4.0,
    seed: int = 0,
) -> pd.DataFrame:
    """One table for people: rank, model, rating, ci_low, ci_high (Bradley-Terry), elo, win_rate, n_games.

    win_rate is the share of the model's games it won against anyone (ties count half).
    """
    board = bradley_terry(judgments, n_bootstrap=n_bootstrap, anchor=anchor, seed=seed)
    board = board.merge(elo(judgments, k=elo_k), on="model", how="left")
    games = model_games(judgments)
    won = pd.concat([
        pd.DataFrame({"model": games["model_a"], "won": games["score"]}),
        pd.DataFrame({"model": games["model_b"], "won": 1 - games["score"]}),
    ]).groupby("model")["won"].mean()
    board["win_rate"] = board["model"].map(won)
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    return board[["rank", "model", "rating", "ci_low", "ci_high", "elo", "win_rate", "n_games"]]


def plot_leaderboard(board: pd.DataFrame, title: str = "Bradley-Terry ratings (95% bootstrap interval)"):
    """A matplotlib Figure: each model's rating with its interval, best on top. Takes `leaderboard`'s or
    `bradley_terry`'s table. Returns the Figure without showing it (Gradio's gr.Plot and savefig take it)."""
    from matplotlib.figure import Figure

    board = board.sort_values("rating")
    fig = Figure(figsize=(7, 0.45 * len(board) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(board))
    err = np.vstack([board["rating"] - board["ci_low"], board["ci_high"] - board["rating"]])
    ax.errorbar(board["rating"], y, xerr=np.nan_to_num(err), fmt="o", capsize=4, color="tab:blue")
    ax.set_yticks(y, board["model"])
    ax.set_xlabel("rating (Elo scale)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_win_rates(matrix: pd.DataFrame, title: str = "Win rate of row model against column model"):
    """A matplotlib Figure: the win-rate matrix as an annotated heatmap."""
    from matplotlib.figure import Figure

    m = len(matrix)
    fig = Figure(figsize=(1.1 * m + 4.0, 0.9 * m + 2.0), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap="RdBu", vmin=0, vmax=1)
    ax.set_xticks(range(m), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(m), matrix.index)
    for i in range(m):
        for j in range(m):
            value = matrix.iat[i, j]
            if pd.notna(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    return fig

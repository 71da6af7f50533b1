"""Model leaderboard from pairwise judgments: Bradley-Terry with bootstrap CIs, online Elo, win-rate matrix.

Modelled on Chatbot Arena's rating code: Bradley-Terry fits P(i beats j) = 1 / (1 + BASE ** ((R_j - R_i) /
SCALE)), reported on the Elo scale (SCALE 400, BASE 10, centred on 1000); a tie counts as half a win for each
side, and the strength of a choice (A>>B vs A>B) does not enter. The fit is the maximum a posteriori under a weak
prior, one virtual tie between each pair of models that met (half a win each way; for two models the
Haldane-Anscombe +1/2 correction, 8-2 read as 8.5-2.5): it shrinks a 90% pair's gap by about 750/n points over n
games (4 at 200, under 1 at AlpacaEval's 805; 4-1 reads as 4.5-1.5, 191 points instead of 241), and keeps a sweep
finite. Its interval is a percentile bootstrap over
judgments, refitted with the same prior: a small sample resamples into sweeps now and then (8-2 into 10-0 one time
in ten), and without it those replicates rated the winner wherever a tiny ridge stopped the fit, 1,400 points up. Elo is the online update in submission
order, kept for comparison: it depends on the order, Bradley-Terry does not.

Input: a judgments frame (collect.aggregate.JUDGMENT_COLUMNS) with model_a and model_b; judgments whose pair
has no model names, or the same model on both sides, carry no information about models and are dropped.

Two things can leave Bradley-Terry without an answer, and both are detected and warned about (PrefloopWarning):
- Groups: models that were never compared, directly or through others, share no scale. Each connected group of
  the comparison graph is rated on its own (centred on 1000, or pinned by the anchor in the anchor's group), the
  table gets a `group` column (1 the group with most models) and ranks count within a group.
- Perfect separation: the maximum-likelihood ratings exist only if, within a group, the win graph (i -> j when i
  won or tied a game against j) is strongly connected (Zermelo 1929, Ford 1957). When some models never lost
  (or never won) against the rest of their group, their gap to the rest has no finite estimate and a tiny ridge
  would print an arbitrary huge rating with a tight interval (every resample of a sweep is a sweep). The prior
  keeps the rating finite (15-0 is read as 15.5-0.5), and the interval side the data leave open is infinite.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from collect.aggregate import direction, validate_judgments
from collect.defaults import N_BOOTSTRAP
from collect.errors import UserError, warn

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

    wins[b, i, j]: (fractional) wins of i over j, bradley_terry's virtual ties included. A tiny ridge fixes the
    arbitrary offset (each connected group to mean 0). The result is centred to mean 0.
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

    When the models fall into several groups never compared with each other (see the module docstring), a `group`
    column follows `model` and the table is sorted by group, then rating: each group has mean rating 1000, except
    the anchor's group, where the anchor is at 1000; a rating means nothing next to another group's.

    Under perfect separation within a group there is no maximum-likelihood rating; the prior's is finite, shrunk,
    and keeps the order the sweeps imply. ci_high is inf for a model that could be any amount higher than the reference
    (the group's mean or the anchor) and still fit the data as well, as a model that never lost to the rest of its
    group can; ci_low is -inf for one that never won; a model between two sweeps gets both (also without a
    bootstrap). The finite side is the percentile bootstrap of the prior's fit; as resampling cannot turn a sweep
    into a closer result, it is a rough bound that leans on the prior rather than a 95% bound.
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
    group, component, reach = _comparison_structure(m, ka, kb, kscore)
    n_groups = group.max() + 1
    anchor_group = group[index[anchor]] if anchor is not None else None
    # The weak prior: one virtual tie between each pair of models that met.
    prior = np.zeros((m, m))
    prior[ka, kb] = prior[kb, ka] = 0.5
    # The sides the intervals of a separated group's models leave open.
    high_open, low_open = np.zeros(m, dtype=bool), np.zeros(m, dtype=bool)
    if n_groups > 1:
        _warn_groups(models, group, anchor, anchor_group)
    for g in range(n_groups):
        members = np.flatnonzero(group == g)
        components = np.unique(component[members])
        if len(components) == 1:
            continue
        reference = [component[index[anchor]]] if g == anchor_group else components
        for i in members:
            high_open[i] = not reach[reference, component[i]].all()  # it can rise without bound above a reference
            low_open[i] = not reach[component[i], reference].all()
        _warn_separation(models, members, component, reach, g if n_groups > 1 else None)

    def tables(weights: np.ndarray) -> np.ndarray:
        wins = np.zeros((len(weights), m, m))
        for kind in range(len(kinds)):
            wins[:, ka[kind], kb[kind]] += weights[:, kind] * kscore[kind]
            wins[:, kb[kind], ka[kind]] += weights[:, kind] * (1 - kscore[kind])
        return wins

    def ratings(weights: np.ndarray) -> np.ndarray:
        r = _to_rating(_fit_strengths(tables(weights) + prior))
        if n_groups == 1:
            if anchor is not None:
                r += INIT_RATING - r[:, [index[anchor]]]
            return r
        for g in range(n_groups):
            cols = group == g
            reference = r[:, [index[anchor]]] if g == anchor_group else r[:, cols].mean(axis=1, keepdims=True)
            r[:, cols] += INIT_RATING - reference
        return r

    estimate = ratings(counts[None, :].astype(float))[0]
    rng = np.random.default_rng(seed)
    boot = (ratings(rng.multinomial(len(games), counts / len(games), size=n_bootstrap).astype(float))
            if n_bootstrap else None)
    tail = (1 - confidence) / 2 * 100
    low, high = (np.percentile(boot, [tail, 100 - tail], axis=0) if boot is not None
                 else (np.full(m, np.nan), np.full(m, np.nan)))
    low, high = np.where(low_open, -np.inf, low), np.where(high_open, np.inf, high)
    n_games = np.bincount(np.concatenate([a, b]), minlength=m)
    board = pd.DataFrame({"model": models, "rating": estimate, "ci_low": low, "ci_high": high, "n_games": n_games})
    if n_groups == 1:
        return board.sort_values("rating", ascending=False, ignore_index=True)
    board.insert(1, "group", group + 1)
    return board.sort_values(["group", "rating"], ascending=[True, False], ignore_index=True)


def _comparison_structure(m: int, ka: np.ndarray, kb: np.ndarray, kscore: np.ndarray):
    """(group, component, reach) of the games (ka[k] against kb[k], A's score kscore[k]) among m models.

    group[i]: the connected group of model i in the comparison graph, numbered by size (0 the most models, ties
    by the first model). component[i]: its strongly connected component of the win graph (i -> j when i won or
    tied against j), which never spans two groups. reach[c, d]: component c reaches d (reflexive), that is, c
    is above d by a chain of sweeps or c is d.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    _, label = connected_components(csr_matrix((np.ones(len(ka)), (ka, kb)), shape=(m, m)), directed=False)
    order = sorted(np.unique(label), key=lambda g: (-(label == g).sum(), np.flatnonzero(label == g)[0]))
    group = np.argsort(order)[label]
    src = np.concatenate([ka[kscore > 0], kb[kscore < 1]])
    dst = np.concatenate([kb[kscore > 0], ka[kscore < 1]])
    n_components, component = connected_components(
        csr_matrix((np.ones(len(src)), (src, dst)), shape=(m, m)), directed=True, connection="strong")
    reach = np.eye(n_components, dtype=int)
    reach[component[src], component[dst]] = 1
    for _ in range(int(np.ceil(np.log2(max(n_components, 2))))):  # transitive closure by squaring
        reach = (reach @ reach > 0).astype(int)
    return group, component, reach.astype(bool)


def _warn_groups(models: list[str], group: np.ndarray, anchor: str | None, anchor_group: int | None) -> None:
    names = "; ".join(f"group {g + 1}: " + ", ".join(np.asarray(models)[group == g]) for g in range(group.max() + 1))
    scale = ("each group is centred on 1000" if anchor is None else
             f"the anchor {anchor} pins group {anchor_group + 1} only; each other group is centred on 1000")
    warn(f"the models fall into {group.max() + 1} groups never compared with each other ({names}), so their "
         f"ratings share no scale: {scale}, and ratings, intervals and ranks compare models within a group only")


def _warn_separation(models: list[str], members: np.ndarray, component: np.ndarray, reach: np.ndarray,
                     g: int | None) -> None:
    where = "the comparisons" if g is None else f"group {g + 1}"
    parts = []
    components = np.unique(component[members])
    for c in sorted(components, key=lambda c: reach[components, c].sum()):  # the top of the sweeps first
        names = ", ".join(models[i] for i in members if component[i] == c)
        above = reach[components[components != c], c].any()  # some other model is above it by sweeps
        below = reach[c, components[components != c]].any()
        if below and not above:
            parts.append(f"{names} never lost a game to the others")
        elif above and not below:
            parts.append(f"{names} never won a game against the others")
        else:
            parts.append(f"{names} lost every game to some of the others and won every game against others")
    warn(f"perfect separation in {where}: {'; '.join(parts)} (a tie counts as a result both ways), so Bradley-Terry "
         "has no finite maximum-likelihood rating there: its ratings are shrunk by a weak prior (one virtual tie "
         "per pair of models that met) and their intervals are infinite on the side the data leave open")


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

    win_rate is the share of the model's games it won against anyone (ties count half). When the models fall into
    groups never compared with each other, `group` follows `rank`, and rank counts within a group (each group's
    best is 1): no order across groups is claimed. Elo, too, is zero-sum within a group.
    """
    board = bradley_terry(judgments, n_bootstrap=n_bootstrap, anchor=anchor, seed=seed)
    board = board.merge(elo(judgments, k=elo_k), on="model", how="left")
    games = model_games(judgments)
    won = pd.concat([
        pd.DataFrame({"model": games["model_a"], "won": games["score"]}),
        pd.DataFrame({"model": games["model_b"], "won": 1 - games["score"]}),
    ]).groupby("model")["won"].mean()
    board["win_rate"] = board["model"].map(won)
    if "group" in board:
        board.insert(0, "rank", board.groupby("group").cumcount() + 1)
        return board[["rank", "group", "model", "rating", "ci_low", "ci_high", "elo", "win_rate", "n_games"]]
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    return board[["rank", "model", "rating", "ci_low", "ci_high", "elo", "win_rate", "n_games"]]


def unjudged_note(board: pd.DataFrame, models: set[str]) -> str:
    """A line naming the models of the project's pairs (`models`, collect.judgments.pair_models) that no judged
    comparison puts on the board yet; "" when there are none."""
    missing = sorted(models - set(board["model"]))
    return f"Not on the board, no judged comparison yet: {', '.join(missing)}." if missing else ""


def display_bounds(board: pd.DataFrame) -> pd.DataFrame:
    """A copy of a leaderboard for a screen: an infinite interval bound (a side the data leave open) as "∞" or
    "-∞" rather than inf. Keep the floats for files: pandas writes and reads back inf."""
    shown = board.copy()
    for column in ("ci_low", "ci_high"):
        if np.isinf(shown[column]).any():
            shown[column] = shown[column].map(lambda v: open_bound(v) if np.isinf(v) else v)
    return shown


def open_bound(value: float) -> str:
    """An infinite interval bound as a screen shows it."""
    return "∞" if value > 0 else "-∞"


def plot_leaderboard(board: pd.DataFrame, title: str = "Bradley-Terry ratings (95% bootstrap interval)"):
    """A matplotlib Figure: each model's rating with its interval, best on top. Takes `leaderboard`'s or
    `bradley_terry`'s table. Returns the Figure without showing it (Gradio's gr.Plot and savefig take it)."""
    from matplotlib.figure import Figure

    grouped = "group" in board
    # Best on top; with groups, group 1 on top, a line between groups, and each model's group in its label.
    board = board.sort_values(["group", "rating"], ascending=[False, True]) if grouped else board.sort_values("rating")
    fig = Figure(figsize=(7, 0.45 * len(board) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(board))
    # An infinite bound (a side the data leave open) is drawn to the edge of the plot, with an arrow head there.
    finite = board[["rating", "ci_low", "ci_high"]].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    pad = max(np.ptp(finite) * 0.15, 50.0) if len(finite) else 50.0
    left, right = (finite.min() - pad, finite.max() + pad) if len(finite) else (INIT_RATING - pad, INIT_RATING + pad)
    low, high = board["ci_low"].clip(lower=left), board["ci_high"].clip(upper=right)
    err = np.vstack([board["rating"] - low, high - board["rating"]])
    ax.errorbar(board["rating"], y, xerr=np.nan_to_num(err), fmt="o", capsize=4, color="tab:blue")
    for side, marker, edge in (("ci_low", "<", left), ("ci_high", ">", right)):
        unbounded = np.isinf(board[side].to_numpy(dtype=float))
        if unbounded.any():
            ax.plot(np.full(unbounded.sum(), edge), y[unbounded], marker, color="tab:blue", clip_on=False)
    ax.set_xlim(left, right)
    if grouped:
        ax.set_yticks(y, [f"{m} (group {g})" for m, g in zip(board["model"], board["group"])])
        for boundary in np.flatnonzero(np.diff(board["group"].to_numpy())):
            ax.axhline(boundary + 0.5, color="grey", lw=0.8)
    else:
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

"""Leaderboard: Bradley-Terry by hand and on planted strengths, Elo, win rates, the AlpacaEval order."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collect.errors import PrefloopWarning, UserError
from collect.leaderboard import (
    bradley_terry,
    display_bounds,
    elo,
    leaderboard,
    plot_leaderboard,
    plot_win_rates,
    win_rate_matrix,
)

ALPACA_EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca_eval"


def games(rows):
    """rows of (model_a, model_b, choice)."""
    return pd.DataFrame(
        [{"pair_id": i, "rater_id": 1, "model_a": a, "model_b": b, "choice": c} for i, (a, b, c) in enumerate(rows)]
    )


def test_two_models_by_hand():
    # x beats y 3 times out of 4 (the third row has x as B); with the prior's virtual tie that is 3.5-1.5, so
    # P = 0.7, a gap of 400 * log10(3.5 / 1.5).
    df = games([("x", "y", 1), ("x", "y", 2), ("y", "x", -1), ("x", "y", -1)])
    board = bradley_terry(df, n_bootstrap=0).set_index("model")
    assert board.loc["x", "rating"] - board.loc["y", "rating"] == pytest.approx(400 * np.log10(3.5 / 1.5), abs=1e-3)
    assert board["rating"].mean() == pytest.approx(1000)
    anchored = bradley_terry(df, n_bootstrap=50, anchor="y").set_index("model")
    assert anchored.loc["y", "rating"] == 1000 and anchored.loc["y", "ci_low"] == pytest.approx(1000)
    # Ties count half a win each way: only ties means equal ratings.
    even = bradley_terry(games([("x", "y", 0)] * 6 + [("y", "z", 0)] * 6), n_bootstrap=0)
    assert np.allclose(even["rating"], 1000)


def test_bradley_terry_recovers_planted_ratings():
    rng = np.random.default_rng(0)
    planted = {"m0": 1200.0, "m1": 1100.0, "m2": 1000.0, "m3": 950.0, "m4": 750.0}
    names = list(planted)
    rows = []
    for _ in range(6000):
        a, b = rng.choice(len(names), size=2, replace=False)
        p_a = 1 / (1 + 10 ** ((planted[names[b]] - planted[names[a]]) / 400))
        rows.append((names[a], names[b], int(rng.choice([1, 2])) if rng.random() < p_a else -1))
    board = bradley_terry(games(rows), n_bootstrap=300).set_index("model")
    truth = pd.Series(planted) - np.mean(list(planted.values())) + 1000
    assert list(board.index) == names  # best first, in the planted order
    assert np.abs(board["rating"] - truth[board.index]).max() < 25
    covered = (board["ci_low"] <= truth[board.index]) & (truth[board.index] <= board["ci_high"])
    assert covered.sum() >= 4
    assert ((board["ci_high"] - board["ci_low"]) < 80).all()


def test_elo_and_win_rates_by_hand():
    df = games([("x", "y", 1)])
    first = elo(df, k=4).set_index("model")["elo"]
    assert first["x"] == pytest.approx(1002) and first["y"] == pytest.approx(998)
    df = games([("x", "y", 1), ("x", "y", 0), ("y", "x", 2), ("z", "x", -2), ("z", "z", 1), (None, "x", 1)])
    matrix = win_rate_matrix(df)
    assert list(matrix.index) == ["x", "y", "z"]
    assert matrix.loc["x", "y"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert matrix.loc["y", "x"] == pytest.approx(1 - (1 + 0.5 + 0) / 3)
    assert matrix.loc["x", "z"] == 1.0 and np.isnan(matrix.loc["y", "z"]) and np.isnan(matrix.loc["x", "x"])
    # Elo follows submission time, not row order: x's only loss comes first in time here.
    timed = games([("x", "y", 1), ("x", "y", -1)]).assign(
        submitted_at=pd.to_datetime(["2024-01-02", "2024-01-01"])
    )
    assert elo(timed).set_index("model").loc["x", "elo"] > 1000


def test_leaderboard_table_and_plots(tmp_path):
    df = games([("x", "y", 1)] * 8 + [("y", "x", 1)] * 2 + [("y", "z", 1)] * 7 + [("z", "y", 2)] * 3)
    board = leaderboard(df, n_bootstrap=100)
    assert list(board.columns) == ["rank", "model", "rating", "ci_low", "ci_high", "elo", "win_rate", "n_games"]
    assert list(board["model"]) == ["x", "y", "z"] and list(board["rank"]) == [1, 2, 3]
    assert board.set_index("model").loc["y", "n_games"] == 20
    assert board.set_index("model").loc["x", "win_rate"] == pytest.approx(0.8)
    fig = plot_leaderboard(board)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z", "y", "x"]
    fig.savefig(tmp_path / "board.png")
    plot_win_rates(win_rate_matrix(df)).savefig(tmp_path / "wins.png")
    assert (tmp_path / "board.png").stat().st_size > 1000 and (tmp_path / "wins.png").stat().st_size > 1000


def test_a_small_sample_keeps_finite_sane_intervals():
    # x-y 8-2 and y-z 7-3: connected, no sweep, no warning. With the prior's virtual tie a pair, 8.5-2.5 and 7.5-3.5
    # (a chain has one solution). One bootstrap replicate in ten turns 8-2 into 10-0; without the prior those rated
    # x wherever a tiny ridge stopped the fit, and x's interval reached 2,647 (commit 9ae15a4).
    df = games([("x", "y", 1)] * 8 + [("y", "x", 1)] * 2 + [("y", "z", 1)] * 7 + [("z", "y", 2)] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrefloopWarning)
        board = bradley_terry(df, n_bootstrap=200, seed=0)
    assert list(board.columns) == ["model", "rating", "ci_low", "ci_high", "n_games"]
    rating = board.set_index("model")["rating"]
    assert rating["x"] - rating["y"] == pytest.approx(400 * np.log10(8.5 / 2.5), abs=1e-3)
    assert rating["y"] - rating["z"] == pytest.approx(400 * np.log10(7.5 / 3.5), abs=1e-3)
    low, high = board.set_index("model")[["ci_low", "ci_high"]].T.to_numpy()
    assert np.isfinite([low, high]).all()
    # A sweep of ten games is 10.5-0.5 under the prior, a gap of 400 log10(21) = 529, so x stays within a few hundred
    # points of its rating in every replicate.
    assert high[0] < rating["x"] + 400 and (low <= board["rating"]).all() and (board["rating"] <= high).all()


def test_groups_never_compared_are_rated_and_ranked_apart(tmp_path):
    # x, y, z never met p or q: two groups, each centred on 1000 on its own, ranks within a group.
    rows = [("x", "y", 1)] * 3 + [("y", "x", 1)] + [("y", "z", 1)] * 2 + [("z", "y", 1)] + [("p", "q", 0)] * 4
    with pytest.warns(PrefloopWarning, match=r"2 groups never compared.*group 1: x, y, z; group 2: p, q"):
        board = leaderboard(games(rows), n_bootstrap=50)
    assert list(board.columns) == ["rank", "group", "model", "rating", "ci_low", "ci_high", "elo", "win_rate",
                                   "n_games"]
    assert list(board["model"]) == ["x", "y", "z", "p", "q"]
    assert list(board["group"]) == [1, 1, 1, 2, 2] and list(board["rank"]) == [1, 2, 3, 1, 2]
    by_model = board.set_index("model")
    # Group 2: only ties, so both at 1000; group 1: x-y 3-1, y-z 2-1, mean 1000.
    assert by_model.loc["p", "rating"] == pytest.approx(1000) and by_model.loc["q", "rating"] == pytest.approx(1000)
    assert by_model.loc[["x", "y", "z"], "rating"].mean() == pytest.approx(1000)
    assert by_model.loc["x", "rating"] - by_model.loc["y", "rating"] == pytest.approx(400 * np.log10(3.5 / 1.5),
                                                                                      abs=1e-3)
    assert by_model.loc["y", "rating"] - by_model.loc["z", "rating"] == pytest.approx(400 * np.log10(2.5 / 1.5),
                                                                                      abs=1e-3)
    # An anchor pins its own group only; the other stays centred on its mean.
    with pytest.warns(PrefloopWarning, match="the anchor q pins group 2 only; each other group is centred on 1000"):
        anchored = bradley_terry(games(rows + [("p", "q", 1)] * 2), n_bootstrap=0, anchor="q").set_index("model")
    assert anchored.loc["q", "rating"] == 1000 and anchored.loc["p", "rating"] > 1000
    assert anchored.loc[["x", "y", "z"], "rating"].mean() == pytest.approx(1000)
    fig = plot_leaderboard(board)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][-1] == "x (group 1)"
    fig.savefig(tmp_path / "groups.png")


def test_a_sweep_has_an_open_interval_and_a_shrunk_rating(tmp_path):
    # claude won all 15 games against text_davinci: no maximum-likelihood rating exists. One virtual tie makes it
    # 15.5 to 0.5, a gap of 400 log10(31); claude's interval is open above, text_davinci's below.
    rows = [("claude", "text_davinci", 1)] * 8 + [("text_davinci", "claude", -2)] * 7
    with pytest.warns(PrefloopWarning, match="claude never lost a game to the others") as caught:
        board = leaderboard(games(rows), n_bootstrap=100)
    assert "text_davinci never won a game" in str(caught[0].message) and len(caught) == 1  # one group: no groups
    by_model = board.set_index("model")
    assert by_model.loc["claude", "rating"] - by_model.loc["text_davinci", "rating"] == pytest.approx(
        400 * np.log10(31), abs=1e-3)
    assert by_model.loc["claude", "ci_high"] == np.inf and np.isfinite(by_model.loc["claude", "ci_low"])
    assert by_model.loc["text_davinci", "ci_low"] == -np.inf and np.isfinite(by_model.loc["text_davinci", "ci_high"])
    assert by_model.loc["claude", "ci_low"] < 1400  # not the ridge's 2200-odd with its tight interval
    # Relative to an anchor the sides follow: the loser pinned, the winner can be any amount higher.
    with pytest.warns(PrefloopWarning):
        anchored = bradley_terry(games(rows), n_bootstrap=20, anchor="text_davinci").set_index("model")
    assert anchored.loc["text_davinci", ["ci_low", "ci_high"]].tolist() == [1000, 1000]
    assert anchored.loc["claude", "ci_high"] == np.inf and np.isfinite(anchored.loc["claude", "ci_low"])
    shown = display_bounds(board).set_index("model")
    assert shown.loc["claude", "ci_high"] == "∞" and shown.loc["text_davinci", "ci_low"] == "-∞"
    fig = plot_leaderboard(board)
    low, high = fig.axes[0].get_xlim()
    assert np.isfinite([low, high]).all() and high - low < 3000
    fig.savefig(tmp_path / "sweep.png")


def test_separation_inside_a_larger_group_and_a_chain():
    # a beat b in every game, b beat c in every game: a is open above, c below, b (between two sweeps) both
    # ways; a mixed result between a and c would close every side.
    chain = [("a", "b", 1)] * 4 + [("b", "c", 1)] * 4
    with pytest.warns(PrefloopWarning, match="b lost every game to some of the others and won every game"):
        board = bradley_terry(games(chain), n_bootstrap=0).set_index("model")
    assert board.loc["a", "ci_high"] == np.inf and board.loc["c", "ci_low"] == -np.inf
    assert board.loc["b", ["ci_low", "ci_high"]].tolist() == [-np.inf, np.inf]
    assert np.isnan(board.loc["a", "ci_low"])  # no bootstrap, no finite side
    assert list(board.index) == ["a", "b", "c"]
    closed = chain + [("c", "a", 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrefloopWarning)
        board = bradley_terry(games(closed), n_bootstrap=0)
    assert board["ci_low"].isna().all() and board["ci_high"].isna().all()
    # A tie counts both ways: x and y tied once, so {x, y} together never lost to z.
    with pytest.warns(PrefloopWarning, match="x, y never lost a game to the others; z never won"):
        board = bradley_terry(games([("x", "y", 0), ("x", "z", 1), ("y", "z", 2)]), n_bootstrap=0)


def test_bad_inputs():
    with pytest.raises(UserError, match="model_a"):
        bradley_terry(pd.DataFrame({"pair_id": [1], "rater_id": [1], "choice": [1]}))
    with pytest.raises(UserError, match="no judgment compares"):
        bradley_terry(games([(None, None, 1), ("x", "x", 1)]))
    with pytest.raises(UserError, match="anchor"):
        bradley_terry(games([("x", "y", 1)]), anchor="gpt-9")


@pytest.mark.skipif(not ALPACA_EVAL.exists(), reason="needs ../shared/data/alpaca_eval")
def test_alpaca_eval_models_come_out_in_win_rate_order():
    from collect.formats import read_records

    rows = []
    for path in sorted(ALPACA_EVAL.glob("*.annotations.json")):
        for record in read_records(path):
            for judged in record.judgments:
                rows.append((record.model_a, record.model_b, judged.choice))
    df = games(rows)
    reference = "text_davinci_003"
    matrix = win_rate_matrix(df)
    by_win_rate = matrix[reference].drop(reference).sort_values(ascending=False).index.tolist()
    assert by_win_rate == ["claude", "gpt-3.5-turbo-0301", "vicuna-13b", "alpaca-7b"]
    board = bradley_terry(df, n_bootstrap=200)
    assert board["model"].tolist() == ["claude", "gpt-3.5-turbo-0301", "vicuna-13b", reference, "alpaca-7b"]


def test_quality_cli_reads_the_database(tmp_path):
    """The three `prefloop quality` commands on a real SQLite database, against the Python API."""
    from typer.testing import CliRunner

    from collect import db
    from collect.formats import Judged, Record
    from collect.ingest import import_records
    from collect.judgments import judgments_frame
    from collect.projects import create_project
    from collect.quality_cli import app

    rng = np.random.default_rng(0)
    strength = {"big": 1.0, "mid": 0.0, "small": -1.0}
    records = []
    for i in range(90):
        a, b = rng.choice(list(strength), size=2, replace=False)
        p_a = 1 / (1 + np.exp(strength[b] - strength[a]))
        judged = [Judged(rater=f"careful{r}", choice=int(rng.choice([1, 2]) * (1 if rng.random() < p_a else -1)))
                  for r in range(3)]
        judged.append(Judged(rater="random", choice=int(rng.integers(-2, 3))))
        records.append(Record(where=f"test:{i}", prompt=[{"role": "user", "content": f"question {i}"}],
                              response_a=f"answer {i} by {a}", response_b=f"answer {i} by {b}",
                              model_a=str(a), model_b=str(b), judgments=judged))
    # A pair of two models nobody has judged yet: not on the board, but named under it.
    records.append(Record(where="test:unjudged", prompt=[{"role": "user", "content": "question unjudged"}],
                          response_a="an answer by new", response_b="an answer by newer", model_a="new",
                          model_b="newer", judgments=[]))
    url = f"sqlite:///{tmp_path / 'quality.db'}"
    db.upgrade(url)
    with db.session_scope(url) as session:
        project = create_project(session, "cli-check")
        import_records(session, project, records)
    with db.session_scope(url) as session:
        frame = judgments_frame(session, project.id)

    runner = CliRunner()
    out = tmp_path / "board.csv"
    result = runner.invoke(app, ["leaderboard", "--project", "cli-check", "--db", url, "--n-bootstrap", "50",
                                 "--out", str(out), "--plot", str(tmp_path / "board.png")])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out)
    assert written["model"].tolist() == ["big", "mid", "small"]
    assert np.allclose(written["rating"], leaderboard(frame, n_bootstrap=50)["rating"])
    assert (tmp_path / "board.png").exists()
    assert "Not on the board, no judged comparison yet: new, newer." in " ".join(result.output.split())

    result = runner.invoke(app, ["agreement", "--project", "cli-check", "--db", url, "--n-bootstrap", "50",
                                 "--out", str(tmp_path / "agreement.csv")])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "agreement.csv")
    assert written["n_items"].iloc[0] == 90 and written["n_bootstrap"].iloc[0] == 50

    result = runner.invoke(app, ["raters", "--project", "cli-check", "--db", url, "--flagged",
                                 "--out", str(tmp_path / "raters.csv")])
    assert result.exit_code == 0, result.output
    flagged = pd.read_csv(tmp_path / "raters.csv")
    assert flagged["rater"].tolist() == ["random"]  # the only rater with flags

    result = runner.invoke(app, ["raters", "--project", "nope", "--db", url])
    assert result.exit_code != 0 and "nope" in str(result.exception)

"""One label per pair from several raters' judgments: majority vote, or a reliability-weighted model.

Every quality statistic in collect/ (agreement, rater_quality, aggregate, leaderboard) reads the same input:
a pandas DataFrame of judgments, one row per judgment, with the columns of `JUDGMENT_COLUMNS`
(`collect.judgments.judgments_frame` builds it from the database):

| column | type | meaning |
|---|---|---|
| pair_id | int | the pair judged |
| rater_id | int | who judged it |
| choice | int -2..2 | +2 A>>B, +1 A>B, 0 tie, -1 B>A, -2 B>>A; always relative to the pair's A and B |
| left_is_a | bool or None | whether A was shown on the left; None when unknown (imported judgments) |
| both_bad | bool | the rater flagged both responses as bad |
| active_seconds | float or NaN | time the rater spent on it (NaN when unknown) |
| submitted_at | datetime or NaT | when it was submitted |
| criteria | dict or None | per-criterion choices, name -> -2..2 relative to A, like `choice` |
| len_a, len_b | int | characters of each response |
| model_a, model_b | str or None | who wrote each response |
| is_gold | bool | the pair has a known answer |
| gold_choice | int -2..2 or None | the known answer of a gold pair |
| prompt_id | int | the prompt both responses answer |

Only pair_id, rater_id and choice are required everywhere; a function that needs more says so in its error.
Missing optional columns are filled with "unknown" (None, NaN, False), so a small hand-made frame works.
Optional extra columns response_a_id, response_b_id (ints) let `collect.rater_quality` recognise a pair that
was shown again as a separate pair with A and B swapped.

Aggregation (`aggregate`) returns one row per pair with the columns of `AGGREGATE_COLUMNS`:
winner ('A', 'B' or 'tie'), confidence (posterior probability of the winner; for majority vote, the share of
votes for the winner), margin (mean signed strength toward the winner with A>>B = 1.0, A>B = 0.5, tie = 0,
floored at 0; the weighted method weighs each judgment by its rater's skill, see `rater_weights`),
n_judgments, and agreement (share of judgments whose direction agrees with the winner).

The weighted method is Dawid & Skene (1979) adapted to pairwise choices: each pair has a true direction
(A better, tie, B better); each rater has a confusion matrix from the true direction to the five buttons,
estimated in screen coordinates (left/right) when the side is known (either side with equal chance when it
is not), so a rater who clicks "left" whatever is shown, or who clicks at random, gets a low reliability and
little say; how strongly a rater presses a side does not depend on which side is right. Fitted by EM; each
rater's confusion is shrunk toward the pooled confusion of all raters (a rater with few judgments is taken to
be an average rater, so with sparse overlap the vote falls back toward majority), and A and B are equally
likely a priori (only the share of true ties is learned), so a pair's lone judgment is never outvoted by
"A usually wins". Gold pairs enter with their known direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from collect.errors import UserError

JUDGMENT_COLUMNS: dict[str, str] = {
    "pair_id": "int: the pair judged",
    "rater_id": "int: who judged it",
    "choice": "int -2..2: +2 A>>B, +1 A>B, 0 tie, -1 B>A, -2 B>>A, relative to the pair's A and B",
    "left_is_a": "bool or None: A was shown on the left; None when unknown",
    "both_bad": "bool: both responses flagged as bad",
    "active_seconds": "float or NaN: active time spent on the judgment",
    "submitted_at": "datetime or NaT: when it was submitted",
    "criteria": "dict or None: per-criterion choices, name -> -2..2 relative to A",
    "len_a": "int: characters of response A",
    "len_b": "int: characters of response B",
    "model_a": "str or None: who wrote response A",
    "model_b": "str or None: who wrote response B",
    "is_gold": "bool: the pair has a known answer",
    "gold_choice": "int -2..2 or None: the known answer of a gold pair",
    "prompt_id": "int: the prompt both responses answer",
}
REQUIRED_COLUMNS = ("pair_id", "rater_id", "choice")
AGGREGATE_COLUMNS = ("pair_id", "winner", "confidence", "margin", "n_judgments", "agreement")

# What a missing optional column means: nothing known.
_DEFAULTS = {
    "left_is_a": None,
    "both_bad": False,
    "active_seconds": np.nan,
    "submitted_at": pd.NaT,
    "criteria": None,
    "len_a": np.nan,
    "len_b": np.nan,
    "model_a": None,
    "model_b": None,
    "is_gold": False,
    "gold_choice": None,
    "prompt_id": np.nan,
}
WINNERS = ("B", "tie", "A")  # indexed by direction + 1


def validate_judgments(judgments: pd.DataFrame, required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """A checked copy of `judgments` with every column of JUDGMENT_COLUMNS; raises UserError naming the fault.

    `required`: columns that must be present (pair_id, rater_id and choice always are, and never empty);
    the others may hold None or NaN where the contract allows it.
    """
    if not isinstance(judgments, pd.DataFrame):
        raise UserError(f"judgments: expected a pandas DataFrame, got {type(judgments).__name__}")
    need = tuple(dict.fromkeys(REQUIRED_COLUMNS + tuple(required)))
    missing = [c for c in need if c not in judgments.columns]
    if missing:
        raise UserError(
            f"judgments: missing column(s) {', '.join(missing)} "
            f"(expected the columns of collect.aggregate.JUDGMENT_COLUMNS: {', '.join(JUDGMENT_COLUMNS)})"
        )
    df = judgments.reset_index(drop=True).copy()
    for name in REQUIRED_COLUMNS:
        null = df[name].isna()
        if null.any():
            raise UserError(f"judgments row {int(np.flatnonzero(null)[0])}: column '{name}' is empty")
    for name in ("pair_id", "rater_id"):
        df[name] = _integers(df[name], name)
    df["choice"] = _integers(df["choice"], "choice", low=-2, high=2)
    for name, default in _DEFAULTS.items():
        if name not in df.columns:
            df[name] = [default] * len(df) if default is None else default
    if df["gold_choice"].notna().any():
        known = df["gold_choice"].notna()
        _integers(df.loc[known, "gold_choice"], "gold_choice", low=-2, high=2)
    bad_side = ~df["left_is_a"].map(lambda v: _is_missing(v) or isinstance(v, (bool, np.bool_)))
    if bad_side.any():
        row = int(np.flatnonzero(bad_side)[0])
        raise UserError(f"judgments row {row}: column 'left_is_a': {df['left_is_a'].iloc[row]!r} is not a boolean")
    df["left_is_a"] = df["left_is_a"].map(lambda v: None if _is_missing(v) else bool(v)).astype(object)
    df["is_gold"] = df["is_gold"].fillna(False).astype(bool)
    df["active_seconds"] = pd.to_numeric(df["active_seconds"], errors="coerce").astype(float)
    if len(df) == 0:
        raise UserError("judgments: no rows")
    return df


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT


def _integers(column: pd.Series, name: str, low: int | None = None, high: int | None = None) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() | (values != np.round(values))
    if low is not None:
        bad |= (values < low) | (values > high)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        want = f"an integer in {low}..{high}" if low is not None else "an integer"
        value = column.iloc[row]
        value = value.item() if isinstance(value, np.generic) else value  # show 3, not np.int64(3)
        raise UserError(f"judgments row {column.index[row]}: column '{name}': {value!r} is not {want}")
    return values.astype(np.int64)


def direction(choice: np.ndarray | pd.Series) -> np.ndarray:
    """+1 A better, 0 tie, -1 B better."""
    return np.sign(np.asarray(choice, dtype=np.int64))


def strength(choice: np.ndarray | pd.Series) -> np.ndarray:
    """Signed strength toward A: A>>B = 1.0, A>B = 0.5, tie = 0, B>A = -0.5, B>>A = -1.0."""
    return np.asarray(choice, dtype=float) / 2.0


# ------------------------------------------------------------------------------------------ majority vote


def majority_vote(judgments: pd.DataFrame) -> pd.DataFrame:
    """Plurality of directions (A, tie, B) per pair.

    When two directions share the most votes, the summed strength of the votes for those directions decides
    between them (A>>B outweighs B>A; votes for a third direction have no say), and a zero sum is a tie.
    Confidence is the share of votes for the winner: there is no rater model to do better.
    """
    df = validate_judgments(judgments)
    codes, pair_ids = pd.factorize(df["pair_id"], sort=True)
    votes = np.zeros((len(pair_ids), 3))
    np.add.at(votes, (codes, direction(df["choice"]) + 1), 1.0)
    top = votes.max(axis=1, keepdims=True)
    leading = (votes == top)[codes, direction(df["choice"]) + 1]  # each vote: is its direction a leader?
    summed = np.bincount(codes, weights=np.where(leading, df["choice"].to_numpy(float), 0.0),
                         minlength=len(pair_ids))
    unique_top = (votes == top).sum(axis=1) == 1
    winner = np.where(unique_top, votes.argmax(axis=1), np.sign(summed).astype(int) + 1)
    confidence = votes[np.arange(len(pair_ids)), winner] / votes.sum(axis=1)
    return _pair_table(df, codes, pair_ids, winner, confidence, weights=None)


# ------------------------------------------------------------------------------------------- Dawid-Skene


@dataclass
class DawidSkeneResult:
    """A fitted Dawid-Skene model.

    pairs: one row per pair: pair_id, p_b, p_tie, p_a (posterior of each true direction), winner, confidence.
    raters: one row per rater: rater_id, n_judgments, reliability (probability that the rater's direction is
        right, averaged over "left is better" and "right is better" so a side-clicker scores near chance),
        accuracy (expected share of their judgments agreeing with the pairs' posterior direction).
    confusion: rater_id -> 3x5 array, P(button | true direction) in screen coordinates: rows are the true
        direction (right better, tie, left better), columns the buttons (right>>, right>, tie, left>, left>>).
        A judgment whose side is unknown counts as either layout with equal chance, so raters who only
        have such judgments get mirror-symmetric matrices: no side bias can be seen without the sides.
    """

    pairs: pd.DataFrame
    raters: pd.DataFrame
    confusion: dict[int, np.ndarray] = field(repr=False)
    class_prior: np.ndarray
    log_posterior: float
    n_iter: int
    converged: bool


def dawid_skene(
    judgments: pd.DataFrame,
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
    prior_strength: float = 4.0,
    tie_prior_strength: float = 20.0,
    use_gold: bool = True,
) -> DawidSkeneResult:
    """Fit Dawid-Skene on pairwise 5-point judgments by EM (an empirical-Bayes MAP estimate).

    max_iter, tol: EM stops when no pair's posterior moves by more than `tol`, or after `max_iter` rounds.
    prior_strength: pseudo-judgments per true direction (right better, left better) in each rater's
        Dirichlet prior, centred on the pooled confusion of all raters: a rater's own confusion moves away
        from the average rater's only as their judgments outweigh these pseudo-judgments.
    tie_prior_strength: pseudo-judgments in the prior of each rater's "true tie" row, which says that facing
        two equally good responses a rater presses tie or a weak choice. True ties are rare, so this row is
        barely identified by data; left weak, it learns to look like random clicking and then claims every
        pair with mixed votes as a tie (seen in bench/aggregation.py: 10-25% false ties with spammers).
        It is a fixed shape, not pooled, for the same reason.
    use_gold: gold pairs keep their known direction instead of a posterior, which anchors the reliabilities.

    Why the model is regularised the way it is. Dawid-Skene learns a rater's confusion from the pairs
    they share with others; a pair judged once says nothing about its rater's reliability, and a rater who
    judged a handful of pairs says little. Left free, such a model is not identified, and EM settles where
    it can explain each lone judgment as an error: a rater's confusion is fitted to the very pair it then
    judges, and a learned class prior soaks up the excess of "A" votes (on summarize-from-feedback, 53% of
    votes for A became a prior of 0.87 for A, and every lone "B" judgment was exported as A with
    confidence 0.8-0.99). These choices keep it to what the data can say:

    - The class prior is symmetric in A and B; only the share of true ties is learned. A and B are the
      order in which a pair was created or imported, not a property of its responses, and a learned
      preference for A cannot be told apart from raters who favour the first response. With a symmetric
      prior, a lone judgment from a rater better than chance (reliability above 0.5) can only be
      confirmed, never reversed.
    - A rater's chance of pressing a side depends on the true direction; how strongly they press it does
      not (see `_confusions`). Per-button confusions have too many free cells for sparse overlap: EM
      learned that "A>B" was evidence for B.
    - Each rater's confusion has a Dirichlet prior of `prior_strength` pseudo-judgments per direction,
      centred on the pooled confusion of all raters (estimated in the same EM, itself with a weak prior
      leaning toward better than chance, which also breaks the "everyone is wrong" symmetry). A rater
      with little overlap is an average rater, so their vote counts like anyone else's and a pair's
      verdict falls back toward majority; several raters who agree are outvoted only by raters who are
      estimated better, or by their own record of being worse than chance, which needs evidence beyond
      the prior.
    - A side that was not recorded is not assumed (see below), so raters' lean toward A in imported data
      is not read as a side bias that would weigh a vote for B above a vote for A.
    - Only judgments on pairs judged more than once, or on gold pairs, enter the M-step. A lone judgment's
      posterior is its own vote, so it can only confirm its rater; counted, a dataset of one label per pair
      made every rater near-perfect and every verdict 0.99 sure. A lone judgment's confidence is what the
      rater's record on shared and gold pairs says of them (about 0.74 under the pooled prior, for a rater with
      none).
    - EM starts from the share of votes per direction (majority), as Dawid & Skene did.
    """
    df = validate_judgments(judgments)
    pair_codes, pair_ids = pd.factorize(df["pair_id"], sort=True)
    rater_codes, rater_ids = pd.factorize(df["rater_id"], sort=True)
    n_pairs, n_raters = len(pair_ids), len(rater_ids)
    button = df["choice"].to_numpy() + 2  # 0..4 relative to A
    # Screen coordinates: when B was on the left, the rater saw the pair mirrored. Where the side is unknown
    # (imported judgments) it is a latent variable, either way with equal chance: assuming "left means A"
    # would let raters' leaning toward A (or a source that lists the better response first) pass for a
    # side bias, and then weigh every vote for B above a vote for A.
    # mirrored[j, k]: screen layout k of judgment j; a known side gives the same layout twice.
    known_side = df["left_is_a"].notna().to_numpy()
    is_mirrored = (df["left_is_a"] == False).to_numpy()  # noqa: E712
    mirrored = np.stack([is_mirrored & known_side, is_mirrored | ~known_side], axis=1)  # (J, 2)
    screen_button = np.where(mirrored, 4 - button[:, None], button[:, None])  # (J, 2)
    # screen_truth[j, z, k]: the true direction z (0 B, 1 tie, 2 A) as rater j saw it in layout k.
    truth = np.arange(3)[None, :, None]
    screen_truth = np.where(mirrored[:, None, :], 2 - truth, truth)  # (J, 3, 2)

    # cell[j, z, k]: the flat (rater, screen truth, screen button) index of judgment j if the truth is z
    # and the layout k.
    cell = (rater_codes[:, None, None] * 3 + screen_truth) * 5 + screen_button[:, None, :]
    layout = np.full(cell.shape, 0.5)  # P(layout k | truth z, judgment j): 1/2 until the first E-step

    tie_prior = tie_prior_strength * np.array([0.05, 0.15, 0.6, 0.15, 0.05])  # mostly "tie", else a weak choice
    gold = np.full(n_pairs, -1)
    if use_gold:
        known = df["is_gold"].to_numpy() & df["gold_choice"].notna().to_numpy()
        gold_dir = np.sign(pd.to_numeric(df.loc[known, "gold_choice"]).to_numpy()).astype(int) + 1
        gold[pair_codes[known]] = gold_dir

    # Confusions are learned from the judgments that can say something about them: on a pair someone else judged
    # too, or on a gold pair. A lone judgment's posterior is its own vote; counted, it tells its rater they were
    # right, and a project of lone judgments (an imported dataset, one label per pair) came out with every rater
    # near-perfect and every verdict at confidence 0.99.
    raters_on_pair = np.bincount(np.unique(np.stack([pair_codes, rater_codes]), axis=1)[0], minlength=n_pairs)
    informative = (raters_on_pair[pair_codes] >= 2) | (gold[pair_codes] >= 0)

    # Start from the share of votes per direction, as Dawid & Skene did.
    posterior = np.full((n_pairs, 3), 0.01)
    np.add.at(posterior, (pair_codes, direction(df["choice"]) + 1), 1.0)
    posterior /= posterior.sum(axis=1, keepdims=True)
    _clamp_gold(posterior, gold)

    converged = False
    for n_iter in range(1, max_iter + 1):
        # M-step: expected counts of (rater, true screen direction, screen button).
        weights = posterior[pair_codes][:, :, None] * layout * informative[:, None, None]  # (J, 3, 2)
        counts = np.bincount(cell.ravel(), weights=weights.ravel(), minlength=n_raters * 15)
        counts = counts.reshape(n_raters, 3, 5)
        confusion, log_prior = _confusions(counts, prior_strength, tie_prior)
        tie_share = (posterior[:, 1].sum() + 1.0) / (n_pairs + 3.0)
        class_prior = np.array([(1.0 - tie_share) / 2, tie_share, (1.0 - tie_share) / 2])
        # E-step: P(button | truth) averaged over the layouts, and which layout explains the button.
        per_layout = confusion.ravel()[cell]  # (J, 3, 2)
        like = per_layout.mean(axis=2)
        layout = per_layout / (2.0 * like[:, :, None])
        log_like = np.log(like)  # (J, 3)
        log_joint = np.log(class_prior) + np.stack(
            [np.bincount(pair_codes, weights=log_like[:, z], minlength=n_pairs) for z in range(3)], axis=1
        )
        new = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        _clamp_gold(new, gold)
        delta = np.abs(new - posterior).max()
        posterior = new
        if delta < tol:
            converged = True
            break

    # The objective EM climbs, with the pooled rater held at its estimate:
    # log P(judgments | parameters) + log Dirichlet(prior + 1) of each rater's parameters.
    log_post = float(logsumexp(log_joint, axis=1).sum() + log_prior)
    winner = posterior.argmax(axis=1)
    # With A and B equally likely a priori, a pair can come out exactly even between them (a lone "tie"
    # from a rater with no side bias): no side is preferred, so the verdict is a tie, as in majority vote.
    # (argmax would pick B, the first index.)
    even = np.isclose(posterior[:, 0], posterior[:, 2], rtol=1e-9, atol=0.0)
    winner[even] = 1
    pairs = pd.DataFrame(
        {
            "pair_id": pair_ids,
            "p_b": posterior[:, 0],
            "p_tie": posterior[:, 1],
            "p_a": posterior[:, 2],
            "winner": np.asarray(WINNERS)[winner],
            "confidence": posterior[np.arange(n_pairs), winner],
        }
    )
    right = direction(df["choice"]) + 1
    agree = posterior[pair_codes, right]
    # Balanced over the two sides so that clicking one side whatever is shown scores like chance.
    reliability = 0.5 * (confusion[:, 0, :2].sum(axis=1) + confusion[:, 2, 3:].sum(axis=1))
    raters = pd.DataFrame(
        {
            "rater_id": rater_ids,
            "n_judgments": np.bincount(rater_codes, minlength=n_raters),
            "reliability": reliability,
            "accuracy": np.bincount(rater_codes, weights=agree, minlength=n_raters)
            / np.bincount(rater_codes, minlength=n_raters),
        }
    )
    return DawidSkeneResult(
        pairs=pairs,
        raters=raters,
        confusion={int(r): confusion[i] for i, r in enumerate(rater_ids)},
        class_prior=class_prior,
        log_posterior=log_post,
        n_iter=n_iter,
        converged=converged,
    )


# Buttons in screen coordinates: right>>, right>, tie, left>, left>>.
_SIDE_BUTTONS = (np.array([1, 0]), np.array([3, 4]))  # (weak, strong) button of the right and the left side
# The pooled rater's own prior, 4 pseudo-judgments per true direction: right more often than not (it
# breaks the symmetry between "everyone is right" and "everyone is wrong"), strong and weak alike.
# Rows: truth right, left better; columns: pressed right, tie, left.
_BASE_DIRECTION = 4.0 * np.array([[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]])
_BASE_STRENGTH = 4.0 * np.full((2, 2), 0.5)  # pressed right, left -> weak, strong


def _confusions(counts: np.ndarray, prior_strength: float, tie_prior: np.ndarray) -> tuple[np.ndarray, float]:
    """M-step: (n_raters, 3, 5) confusions from expected counts of (rater, true screen direction, screen
    button), and the log prior density of the parameters (up to a constant).

    For a true direction (right or left better), P(button) = P(pressed side | truth) * P(strength | pressed
    side): a rater's reliability is their direction matrix, and how strongly they press a side is the same
    whichever side is right. With per-button confusions and sparse overlap, EM can learn that a button is
    pressed more often when it is wrong (on a 60-judgment summarize slice, "A>B" became evidence for B);
    with this form the evidence of a judgment for its side is P(side | side) / P(side | other side), which
    exceeds 1 whenever the rater is better than chance. Strength still sets margins and tells ties apart.
    Both matrices are shrunk toward the pooled rater (all raters' counts plus a weak base prior) by
    `prior_strength` pseudo-judgments; the true-tie row keeps its own fixed-shape prior.
    """
    n_raters = counts.shape[0]
    direction_counts = np.stack(  # (R, truth right/left, pressed right/tie/left)
        [counts[:, [0, 2], :2].sum(axis=2), counts[:, [0, 2], 2], counts[:, [0, 2], 3:].sum(axis=2)], axis=2
    )
    strength_counts = np.stack(  # (R, pressed right/left, weak/strong)
        [counts[:, [0, 2]][:, :, side].sum(axis=1) for side in _SIDE_BUTTONS], axis=1
    )
    log_prior = 0.0
    params = []
    for data, base in ((direction_counts, _BASE_DIRECTION), (strength_counts, _BASE_STRENGTH)):
        pooled = data.sum(axis=0) + base
        prior = prior_strength * pooled / pooled.sum(axis=1, keepdims=True)
        theta = (data + prior) / (data + prior).sum(axis=2, keepdims=True)
        log_prior += float((prior * np.log(theta)).sum())
        params.append(theta)
    direction_p, strength_p = params
    confusion = np.empty((n_raters, 3, 5))
    for row, truth in ((0, 0), (2, 1)):
        confusion[:, row, 2] = direction_p[:, truth, 1]
        for side, pressed in ((0, 0), (1, 2)):
            confusion[:, row, _SIDE_BUTTONS[side]] = direction_p[:, truth, pressed, None] * strength_p[:, side]
    tie_row = counts[:, 1] + tie_prior
    confusion[:, 1] = tie_row / tie_row.sum(axis=1, keepdims=True)
    log_prior += float((tie_prior * np.log(confusion[:, 1])).sum())
    return confusion, log_prior


def _clamp_gold(posterior: np.ndarray, gold: np.ndarray) -> None:
    known = gold >= 0
    posterior[known] = 0.0
    posterior[known, gold[known]] = 1.0


def rater_weights(reliability: np.ndarray | pd.Series) -> np.ndarray:
    """Skill above a coin flip, 2 * reliability - 1 floored at 0: a random or one-sided clicker weighs 0."""
    return np.clip(2.0 * np.asarray(reliability, dtype=float) - 1.0, 0.0, None)


# -------------------------------------------------------------------------------------------- aggregate


def aggregate(judgments: pd.DataFrame, method: Literal["majority", "weighted"] = "majority") -> pd.DataFrame:
    """One row per pair: pair_id, winner ('A', 'B', 'tie'), confidence, margin, n_judgments, agreement.

    method: "majority" (plurality vote) or "weighted" (Dawid-Skene; its margin weighs each judgment's
    strength by the rater's skill, `rater_weights`, so spammers do not set margins).
    """
    if method == "majority":
        return majority_vote(judgments)
    if method != "weighted":
        raise UserError(f"unknown aggregation method {method!r}: expected 'majority' or 'weighted'")
    df = validate_judgments(judgments)
    fit = dawid_skene(df)
    codes, pair_ids = pd.factorize(df["pair_id"], sort=True)
    winner = fit.pairs["winner"].map({w: i for i, w in enumerate(WINNERS)}).to_numpy()
    weight = rater_weights(df["rater_id"].map(fit.raters.set_index("rater_id")["reliability"]))
    return _pair_table(df, codes, pair_ids, winner, fit.pairs["confidence"].to_numpy(), weights=weight)


def _pair_table(
    df: pd.DataFrame,
    codes: np.ndarray,
    pair_ids: pd.Index,
    winner: np.ndarray,
    confidence: np.ndarray,
    weights: np.ndarray | None,
) -> pd.DataFrame:
    """The aggregation output from per-pair winners (0 B, 1 tie, 2 A) and confidences."""
    n_pairs = len(pair_ids)
    n = np.bincount(codes, minlength=n_pairs).astype(float)
    toward = strength(df["choice"]) * (winner[codes] - 1)  # signed strength toward the winner
    if weights is None:
        margin = np.bincount(codes, weights=toward, minlength=n_pairs) / n
    else:
        total = np.bincount(codes, weights=weights, minlength=n_pairs)
        weighted = np.bincount(codes, weights=weights * toward, minlength=n_pairs)
        plain = np.bincount(codes, weights=toward, minlength=n_pairs) / n
        # A pair judged only by zero-weight raters falls back to the plain mean.
        margin = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), plain)
    agrees = (direction(df["choice"]) + 1) == winner[codes]
    return pd.DataFrame(
        {
            "pair_id": pair_ids.to_numpy(),
            "winner": np.asarray(WINNERS)[winner],
            "confidence": confidence,
            "margin": np.clip(margin, 0.0, None),
            "n_judgments": n.astype(int),
            "agreement": np.bincount(codes, weights=agrees.astype(float), minlength=n_pairs) / n,
        }
    )

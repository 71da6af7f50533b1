"""Export to TRL's conversational preference format, as a `datasets` dataset.

Columns: `prompt` (list of messages), `chosen` and `rejected` (each a list holding the assistant message),
`margin`, `confidence`, `pair_id`, `n_judgments`, `agreement`, `source`, `domain`.

How a pair becomes a row:
- pairs that are not `active` (flagged as harmful and awaiting review, or retired) are left out and counted;
- its judgments are aggregated (`majority` vote, or `weighted` by each rater's estimated reliability);
  an admin's adjudication, when there is one, decides instead (confidence 1); a gold pair's known answer
  decides over the raters' vote (confidence 1);
- `margin` is the mean signed strength toward the winner, A>>B = 1.0, A>B = 0.5, tie = 0, the other way
  negative, floored at 0: three "much better" votes give 1.0, "better, better, tie" gives 0.33;
- pairs that come out tied, or that most raters marked both-bad, are not preferences: they are left out,
  or written to a separate file with `include_ties`, in the same columns plus `kind` (`tie` or `both_bad`) and
  `chosen_better` (whether the verdict still preferred `chosen`, by `margin`: raters who mark both responses bad may
  yet find one better; false for a tie), which import reads back (collect.formats.trl_record).
The aggregation, threshold and counts are written beside the data (`<file name>.meta.json`, or
`prefloop.json` inside a save_to_disk folder).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from collect.aggregate import aggregate
from collect.auth import audit
from collect.errors import UserError, warn
from collect.judgments import judgments_frame
from collect.models import Judgment, Pair, Project
from collect.output_dirs import check_can_write_file, check_output_dir, replacing_dir, write_whole

AGGREGATIONS = ("majority", "weighted")
FILE_SUFFIXES = (".parquet", ".jsonl", ".json")
"""What `export_project` writes as one file; any other name is a save_to_disk folder."""
EXPORT_KIND = "prefloop.export"
"""The `kind` of an export's metadata file, so that only an earlier export is replaced."""


@dataclass
class ExportResult:
    path: str
    rows: int
    ties_path: str | None
    ties: int
    both_bad: int
    below_confidence: int
    unjudged: int
    aggregation: str
    min_confidence: float
    not_active: int = 0
    """Pairs left out because they are flagged as harmful or retired."""

    def summary(self) -> str:
        """What was written and what was left out, in one line: `prefloop export` and the dashboard print it."""
        return (f"{self.rows} preference pairs ({self.aggregation} aggregation); left out: {self.ties} ties, "
                f"{self.both_bad} both-bad, {self.below_confidence} below confidence {self.min_confidence:g}, "
                f"{self.unjudged} not judged yet, {self.not_active} flagged or retired")


def preference_rows(
    session: Session,
    project: Project,
    aggregation: str = "majority",
    min_confidence: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(preference rows, tie and both-bad rows, counts) for a project; `progress(done, total)` over pairs."""
    if aggregation not in AGGREGATIONS:
        raise UserError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
    if not 0 <= min_confidence <= 1:  # nan fails this too
        raise UserError(f"min_confidence (--min-confidence) must be between 0 and 1, got {min_confidence}")
    frame = judgments_frame(session, project.id)
    # In id order: without ORDER BY, PostgreSQL returns rows in whatever order its plan meets them.
    pairs = {p.id: p for p in session.scalars(
        select(Pair).where(Pair.project_id == project.id, Pair.status == "active").order_by(Pair.id))}
    verdicts = aggregate(frame, method=aggregation) if len(frame) else pd.DataFrame(
        columns=["pair_id", "winner", "confidence", "margin", "n_judgments", "agreement"])
    verdicts = {int(v.pair_id): v for v in verdicts.itertuples(index=False)}
    both_bad = frame.groupby("pair_id")["both_bad"].mean().to_dict() if len(frame) else {}
    sides = frame.groupby("pair_id")["choice"].apply(lambda c: np.sign(c).tolist()).to_dict() if len(frame) else {}
    adjudicated = {j.pair_id: j for j in session.scalars(
        select(Judgment).where(Judgment.project_id == project.id, Judgment.kind == "adjudication")
        .order_by(Judgment.submitted_at))}

    rows, ties = [], []
    counts = {"below_confidence": 0, "unjudged": 0, "both_bad": 0, "not_active": session.scalar(
        select(func.count(Pair.id)).where(Pair.project_id == project.id, Pair.status != "active"))}
    for n, (pair_id, pair) in enumerate(pairs.items(), start=1):
        if progress and (n % 500 == 0 or n == len(pairs)):
            progress(n, len(pairs))
        vote = verdicts.get(pair_id)
        # A known answer (an admin's ruling, a gold pair's answer) overrides the raters, both-bad flags included.
        raters_bad = False
        if pair_id in adjudicated:
            verdict = _decided(adjudicated[pair_id].choice, sides.get(pair_id, []))
        elif pair.is_gold and pair.gold_choice is not None:
            verdict = _decided(pair.gold_choice, sides.get(pair_id, []))
        elif vote is not None:
            verdict = vote._asdict()
            raters_bad = both_bad.get(pair_id, 0) > 0.5
        else:
            counts["unjudged"] += 1
            continue
        a, b = pair.response_a.content, pair.response_b.content
        winner = verdict["winner"]
        row = {
            "prompt": pair.prompt.conversation,
            "chosen": [{"role": "assistant", "content": a if winner != "B" else b}],
            "rejected": [{"role": "assistant", "content": b if winner != "B" else a}],
            "margin": float(verdict["margin"]),
            "confidence": float(verdict["confidence"]),
            "pair_id": pair_id,
            "n_judgments": int(verdict["n_judgments"]),
            "agreement": float(verdict["agreement"]),
            "source": pair.source,
            "domain": pair.prompt.domain,
        }
        if raters_bad:
            counts["both_bad"] += 1
            # `chosen` is the winner's side, but so is A's for a tie: only this column tells the lean from none.
            ties.append({**row, "kind": "both_bad", "chosen_better": winner != "tie"})
        elif winner == "tie":
            ties.append({**row, "kind": "tie", "chosen_better": False})
        elif row["confidence"] < min_confidence:
            counts["below_confidence"] += 1
        else:
            rows.append(row)
    return rows, ties, counts


def _decided(choice: int, sides: list[int]) -> dict[str, Any]:
    """A verdict fixed by a known answer (an adjudication or a gold pair's answer). `sides`: the direction of each
    of the pair's judgments (+1 A, 0 tie, -1 B); `agreement` is their share that agrees with the answer (the
    vote's own agreement is with the side the answer may overrule), NaN where nobody judged the pair."""
    agreement = sum(side == np.sign(choice) for side in sides) / len(sides) if sides else float("nan")
    return {"winner": "A" if choice > 0 else "B" if choice < 0 else "tie", "confidence": 1.0,
            "margin": abs(choice) / 2, "n_judgments": len(sides), "agreement": agreement}


def _write(rows: list[dict[str, Any]], path: Path, ties: bool = False) -> None:
    import datasets

    # One schema whether or not there are rows: the same types in every export (a `domain` never set is a string
    # column, not a null one), and an export with no rows still has every column.
    messages = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    features = datasets.Features({
        "prompt": messages, "chosen": messages, "rejected": messages, "margin": datasets.Value("float64"),
        "confidence": datasets.Value("float64"), "pair_id": datasets.Value("int64"),
        "n_judgments": datasets.Value("int64"), "agreement": datasets.Value("float64"),
        "source": datasets.Value("string"), "domain": datasets.Value("string"),
        **({"kind": datasets.Value("string"), "chosen_better": datasets.Value("bool")} if ties else {})})
    dataset = datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":  # an interrupted write leaves the earlier export whole
        write_whole(path, dataset.to_parquet)
    elif path.suffix.lower() in (".jsonl", ".json"):
        write_whole(path, lambda name: dataset.to_json(name, lines=True, force_ascii=False))
    else:
        # Into a staging folder that then replaces the earlier export whole: none of its files stay behind.
        with replacing_dir(path) as staging:
            # datasets writes no data file for zero rows unless told one shard, and then cannot load the folder.
            dataset.save_to_disk(str(staging), num_shards=1 if len(dataset) == 0 else None)


def meta_path(out: Path) -> Path:
    """Where an export to `out` records its aggregation and counts."""
    return out / "prefloop.json" if out.suffix.lower() not in FILE_SUFFIXES else out.with_name(out.name + ".meta.json")


def ties_path(out: Path) -> Path:
    """Where an export to `out` writes its side file of ties and both-bad pairs."""
    return (out.with_name(out.stem + ".ties" + out.suffix) if out.suffix.lower() in FILE_SUFFIXES
            else out.with_name(out.name + ".ties"))


NOT_FOLDER_SUFFIXES = {".csv", ".tsv", ".gz", ".bz2", ".xz", ".zst", ".zip", ".tar", ".txt", ".arrow", ".feather",
                       ".pq", ".ndjson", ".db", ".sqlite", ".xlsx", ".pkl", ".yaml", ".yml"}
"""Names of files other tools write, which export would otherwise have made a save_to_disk folder of."""


def _earlier_export(out: Path) -> dict[str, Any] | None:
    """The metadata of the export at `out`, or None where there is none (also one written before exports had a
    `kind`: it has their fields)."""
    try:
        meta = json.loads(meta_path(out).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(meta, dict) and (meta.get("kind") == EXPORT_KIND or {"project", "aggregation", "rows"} <= set(meta)):
        return meta
    return None


def _earlier_ties(out: Path, earlier: dict[str, Any] | None) -> bool:
    """Whether the side file beside `out` is the earlier export's (its meta names it, however the path was spelt)."""
    return earlier is not None and bool(earlier.get("ties_path")) and Path(earlier["ties_path"]).name == ties_path(
        out).name


def check_export_path(out: Path, include_ties: bool = False) -> None:
    """UserError unless `out` (and with `include_ties` its side file) names a new file or folder, or an earlier
    export's, and can be written: exporting over a model's folder replaced its prefloop.json, a side file replaced
    whatever had its name, and a name like x.csv or x.jsonl.gz made a folder so named."""
    suffix = out.suffix.lower()
    earlier = _earlier_export(out)
    if suffix in FILE_SUFFIXES:
        if out.is_dir():
            raise UserError(f"{out}: is a folder; name a new file, or a folder without a {suffix} suffix")
        if out.exists() and earlier is None:
            raise UserError(f"{out}: exists and is not an earlier export (no {meta_path(out).name} beside it); "
                            "name a new file, or remove it first")
        check_can_write_file(out, "export")
    elif suffix in NOT_FOLDER_SUFFIXES and not out.is_dir():
        raise UserError(f"{out}: export writes .parquet, .jsonl or .json files, or a save_to_disk folder; not "
                        f"{out.suffix}")
    elif earlier is None:
        check_output_dir(out, "prefloop.json", EXPORT_KIND)
    elif Path.cwd().is_relative_to(out.resolve()):
        raise UserError(f"{out}: holds the current folder, and the export replaces its folder whole; run it from "
                        "elsewhere")
    side = ties_path(out)
    if include_ties and side.exists() and (not _earlier_ties(out, earlier)
                                           or side.is_dir() == (side.suffix.lower() in FILE_SUFFIXES)):
        raise UserError(f"{side}: exists and is not this export's earlier side file of ties; move it, or name "
                        "another export")


def export_project(
    session: Session,
    project: Project,
    out: str | Path,
    *,
    aggregation: str = "majority",
    min_confidence: float = 0.0,
    include_ties: bool = False,
    actor_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write a project's preferences to `out` (.parquet, .jsonl, .json as JSON lines, or a folder for save_to_disk).

    `progress(done, total)` is called as pairs are turned into rows.
    """
    out = Path(out)
    check_export_path(out, include_ties)
    earlier = _earlier_export(out)
    rows, ties, counts = preference_rows(session, project, aggregation, min_confidence, progress)
    side = ties_path(out)
    _write(rows, out)
    if include_ties:
        _write(ties, side, ties=True)
    elif _earlier_ties(out, earlier) and side.is_dir():
        # The earlier export's side file would sit beside a new export that wrote none, its meta saying so.
        shutil.rmtree(side)
    elif _earlier_ties(out, earlier) and side.exists():
        side.unlink()
    if not rows:
        warn(f"{out}: no preference pairs to export (of {project.name}: {counts['unjudged']} pair(s) not judged "
             f"yet, {len(ties)} tie(s) or both-bad, {counts['below_confidence']} below --min-confidence "
             f"{min_confidence:g}); it holds no rows")
    result = ExportResult(str(out), len(rows), str(side) if include_ties else None,
                          sum(t["kind"] == "tie" for t in ties), counts["both_bad"], counts["below_confidence"],
                          counts["unjudged"], aggregation, min_confidence, counts["not_active"])
    meta = {"kind": EXPORT_KIND, "project": project.name, **asdict(result)}
    write_whole(meta_path(out), lambda name: Path(name).write_text(json.dumps(meta, indent=2)))
    audit(session, "export", actor_id, project.id, **asdict(result))
    return result

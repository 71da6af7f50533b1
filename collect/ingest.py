"""Import: parse and check a whole file first, then write it in one transaction.

Any bad row means nothing is imported. Everything is keyed by its content (prompt conversation, response
text and model, the two responses of a pair, the judgment's source row), so importing the same file twice
adds nothing the second time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from collect.auth import audit
from collect.db import refresh_planner_statistics
from collect.formats import Record, content_hash, detect_format, read_records, records_from_dataset
from collect.models import Assignment, ImportRun, Judgment, Pair, Project, Prompt, Rater, Response


@dataclass
class ImportResult:
    """What an import added (anything already in the project is skipped, so a second import adds nothing)."""

    records: int
    prompts: int
    responses: int
    pairs: int
    judgments: int
    raters: int
    gold: int = 0
    """Pairs made gold (or given a new known answer) by this import, new pairs and existing ones alike."""

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _sensitive_and_domain(tags: list[str]) -> tuple[str, str]:
    # Lower case, as raters' opt-ins are stored (collect.projects.normalize_categories): "Violence" is "violence".
    sensitive = sorted({t.split(":", 1)[1].strip().lower() for t in tags if t.startswith("sensitive:")})
    domains = [t.split(":", 1)[1] for t in tags if t.startswith("domain:")]
    return ",".join(sensitive), (domains[0] if domains else "")


def import_records(
    session: Session,
    project: Project,
    records: list[Record],
    *,
    as_gold: bool = False,
    actor_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Write checked records into a project. The caller's transaction makes it all-or-nothing.

    as_gold: the records' labels become the pairs' known answers (gold pairs for rater checks)
    instead of judgments.
    """
    result = ImportResult(len(records), 0, 0, 0, 0, 0)
    pid = project.id
    prompts = {h: i for h, i in session.execute(
        select(Prompt.content_hash, Prompt.id).where(Prompt.project_id == pid))}
    responses = {(p, m, h): i for p, m, h, i in session.execute(
        select(Response.prompt_id, Response.model, Response.content_hash, Response.id)
        .join(Prompt, Prompt.id == Response.prompt_id).where(Prompt.project_id == pid))}
    pairs = {(a, b): i for a, b, i in session.execute(
        select(Pair.response_a_id, Pair.response_b_id, Pair.id).where(Pair.project_id == pid))}
    gold_answers = dict(session.execute(
        select(Pair.id, Pair.gold_choice).where(Pair.project_id == pid, Pair.is_gold.is_(True))).all())
    judgment_keys = set(session.scalars(
        select(Judgment.external_key).where(Judgment.project_id == pid, Judgment.external_key.is_not(None))))
    raters = {n: i for n, i in session.execute(select(Rater.name, Rater.id))}
    seen_keys: dict[str, int] = {}

    # Four passes (prompts, responses, pairs, judgments), each written with one batched flush: an import
    # is a handful of round trips to the database instead of one per row.
    new_prompts: dict[str, Prompt] = {}
    for record in records:
        prompt_hash = content_hash(record.prompt)
        if prompt_hash not in prompts and prompt_hash not in new_prompts:
            sensitive, domain = _sensitive_and_domain(record.tags)
            new_prompts[prompt_hash] = Prompt(
                project_id=pid, conversation=record.prompt, tags=record.tags, source=record.source,
                external_id=record.prompt_id, content_hash=prompt_hash, sensitive=sensitive, domain=domain)
    session.add_all(new_prompts.values())
    session.flush()
    prompts.update({h: p.id for h, p in new_prompts.items()})
    result.prompts = len(new_prompts)
    record_prompt = [prompts[content_hash(r.prompt)] for r in records]

    new_responses: dict[tuple[int, str, str], Response] = {}
    for record, prompt_id in zip(records, record_prompt):
        if record.response_a is None:
            continue
        for text, model, generation in ((record.response_a, record.model_a, record.generation_a),
                                        (record.response_b, record.model_b, record.generation_b)):
            key = (prompt_id, model, content_hash(text))
            if key not in responses and key not in new_responses:
                new_responses[key] = Response(prompt_id=prompt_id, model=model, content=text,
                                              generation=generation, content_hash=key[2])
    session.add_all(new_responses.values())
    session.flush()
    responses.update({k: r.id for k, r in new_responses.items()})
    result.responses = len(new_responses)

    new_pairs: dict[tuple[int, int], Pair] = {}
    made_gold: dict[int, int] = {}  # existing pair id -> the known answer this file gives it
    record_pair: list[int | None] = []
    for record, prompt_id in zip(records, record_prompt):
        if record.response_a is None:
            record_pair.append(None)
            continue
        key = (responses[(prompt_id, record.model_a, content_hash(record.response_a))],
               responses[(prompt_id, record.model_b, content_hash(record.response_b))])
        record_pair.append(key)
        gold = record.judgments[0].choice if as_gold and record.judgments else record.gold_choice
        if key in pairs:
            # A pair already in the project becomes gold too; the file's first answer for it wins.
            if gold is not None and pairs[key] not in made_gold and gold_answers.get(pairs[key]) != gold:
                made_gold[pairs[key]] = gold
        elif key not in new_pairs:
            new_pairs[key] = Pair(project_id=pid, prompt_id=prompt_id, response_a_id=key[0], response_b_id=key[1],
                                  source=record.source, external_id=record.pair_id, is_gold=gold is not None,
                                  gold_choice=gold)
    session.add_all(new_pairs.values())
    if made_gold:
        session.execute(update(Pair), [{"id": i, "is_gold": True, "gold_choice": g} for i, g in made_gold.items()])
    session.flush()
    pairs.update({k: p.id for k, p in new_pairs.items()})
    result.pairs = len(new_pairs)
    result.gold = sum(p.is_gold for p in new_pairs.values()) + len(made_gold)

    if not as_gold:
        new_raters = {j.rater: Rater(name=j.rater, role="rater", external=True)
                      for r in records for j in r.judgments if j.rater not in raters}
        session.add_all(new_raters.values())
        session.flush()
        raters.update({n: r.id for n, r in new_raters.items()})
        result.raters = len(new_raters)
        new_judgments = []
        for n, (record, key) in enumerate(zip(records, record_pair), start=1):
            for judged in record.judgments if key is not None else []:
                pair_id = pairs[key]
                # Content-keyed, with a counter so that two identical rows in one file stay two judgments.
                base = hashlib.sha256(repr((record.source.split(":", 1)[0], pair_id, judged.rater, judged.choice,
                                            judged.rationale, judged.both_bad, sorted(judged.criteria.items()),
                                            judged.confidence)).encode()).hexdigest()
                seen_keys[base] = seen_keys.get(base, 0) + 1
                external_key = f"{base}#{seen_keys[base]}"
                if external_key in judgment_keys:
                    continue
                judgment_keys.add(external_key)
                new_judgments.append(Judgment(
                    project_id=pid, pair_id=pair_id, rater_id=raters[judged.rater], choice=judged.choice,
                    both_bad=judged.both_bad, criteria=judged.criteria, rationale=judged.rationale, kind="import",
                    external_key=external_key, confidence=judged.confidence))
            if progress and (n % 500 == 0 or n == len(records)):
                progress(n, len(records))
        session.add_all(new_judgments)
        result.judgments = len(new_judgments)
    session.flush()
    _recount_claims(session, pid)
    refresh_planner_statistics(session, ["prompt", "response", "pair", "judgment"])
    audit(session, "import", actor_id, pid, **result.as_dict())
    return result


def _recount_claims(session: Session, project_id: int) -> None:
    """Imported judgments count toward a pair's overlap like judgments made in the app."""
    judged = select(func.count(Judgment.id)).where(Judgment.pair_id == Pair.id, Judgment.assignment_id.is_(None))
    open_or_done = select(func.count(Assignment.id)).where(
        Assignment.pair_id == Pair.id, Assignment.status.in_(("open", "submitted")))
    session.execute(
        update(Pair).where(Pair.project_id == project_id)
        .values(n_claimed=judged.scalar_subquery() + open_or_done.scalar_subquery())
        .execution_options(synchronize_session=False)
    )


@dataclass
class ParsedFile:
    """A file read and checked, ready to write. Parsing needs no database, so it happens before a
    transaction is opened (on SQLite, a transaction holds the one write lock)."""

    path: Path
    format: str
    records: list[Record]
    sha256: str


def read_file(path: str | Path, fmt: str = "auto", *, rater: str | None = None) -> ParsedFile:
    """Parse and check a file (or a save_to_disk folder); UserError naming file, line and field."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    return ParsedFile(path, fmt, read_records(path, fmt, rater), _sha256(path) if path.is_file() else "")


def import_parsed(
    session: Session,
    project: Project,
    parsed: ParsedFile,
    *,
    as_gold: bool = False,
    actor_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Write a parsed file into a project and record the import run; the caller's transaction makes it atomic."""
    result = import_records(session, project, parsed.records, as_gold=as_gold, actor_id=actor_id, progress=progress)
    session.add(ImportRun(project_id=project.id, path=str(parsed.path), format=parsed.format, sha256=parsed.sha256,
                          counts=result.as_dict()))
    return result


def import_file(
    session: Session,
    project: Project,
    path: str | Path,
    fmt: str = "auto",
    *,
    rater: str | None = None,
    as_gold: bool = False,
    actor_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import a file (or a save_to_disk folder) into a project, atomically."""
    return import_parsed(session, project, read_file(path, fmt, rater=rater), as_gold=as_gold, actor_id=actor_id,
                         progress=progress)


def import_dataset(
    session: Session, project: Project, dataset: Any, fmt: str = "generic", *, name: str = "dataset",
    rater: str | None = None, as_gold: bool = False, actor_id: int | None = None,
) -> ImportResult:
    """Import any `datasets` dataset (or list of dicts) in one of the supported row formats."""
    records = records_from_dataset(dataset, fmt, name, rater)
    return import_records(session, project, records, as_gold=as_gold, actor_id=actor_id)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

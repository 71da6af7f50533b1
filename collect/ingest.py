"""Import: parse and check a whole file first, then write it in one transaction.

Any bad row means nothing is imported. Everything is keyed by its content (prompt conversation, response
text and model, the two responses of a pair, the judgment's source row), so importing the same file twice
adds nothing the second time.

Rows of a chosen and a rejected response (TRL's, HH's, `prefloop export`'s) name no model and no order of the two:
such a row is the project's pair of the same prompt and texts in either order, under whatever model names it holds,
so another project's export of pairs this project already holds adds its labels to them instead of storing the
pairs again (summarize's responses are stored under their policy's name, which an export does not carry). The
other way round, a row that names its models (summarize's) is the pair of the same prompt and texts held under no
model name (an export imported first), in either order. A project's own export is refused: its labels are the
project's judgments, which it would count twice.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from collect.auth import audit
from collect.db import refresh_planner_statistics
from collect.errors import UserError, warn
from collect.formats import Record, content_hash, detect_format, read_records, records_from_dataset
from collect.models import ImportRun, Judgment, Pair, Project, Prompt, Rater, Response


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
    imported_before: bool = False,
) -> ImportResult:
    """Write checked records into a project. The caller's transaction makes it all-or-nothing.

    as_gold: the records' labels become the pairs' known answers (gold pairs for rater checks)
    instead of judgments.
    imported_before: these records are a file this project imported before, so the labels it already holds are no
    news (else labels skipped because their pair came from elsewhere and holds them already are warned about).
    """
    result = ImportResult(len(records), 0, 0, 0, 0, 0)
    pid = project.id
    prompts = {h: i for h, i in session.execute(
        select(Prompt.content_hash, Prompt.id).where(Prompt.project_id == pid))}
    responses = {(p, m, h): i for p, m, h, i in session.execute(
        select(Response.prompt_id, Response.model, Response.content_hash, Response.id)
        .join(Prompt, Prompt.id == Response.prompt_id).where(Prompt.project_id == pid))}
    pairs, pair_source = {}, {}
    for a, b, i, source in session.execute(
            select(Pair.response_a_id, Pair.response_b_id, Pair.id, Pair.source).where(Pair.project_id == pid)):
        pairs[a, b], pair_source[i] = i, source
    gold_answers = dict(session.execute(
        select(Pair.id, Pair.gold_choice).where(Pair.project_id == pid, Pair.is_gold.is_(True))).all())
    judgment_keys = set(session.scalars(
        select(Judgment.external_key).where(Judgment.project_id == pid, Judgment.external_key.is_not(None))))
    held_keys = frozenset(judgment_keys)
    raters = {n: i for n, i in session.execute(select(Rater.name, Rater.id))}
    seen_keys: dict[str, int] = {}
    # The project's pairs by content, (prompt id, text hash of A, of B) -> (A id, B id), the oldest pair first.
    response_content = {i: (p, h) for (p, _, h), i in responses.items()}
    unnamed = {i for (_, m, _), i in responses.items() if not m}  # stored from rows that name no model
    pair_content: dict[tuple[int, str, str], tuple[int, int]] = {}
    for (a, b), i in sorted(pairs.items(), key=lambda item: item[1]):
        pair_content.setdefault((*response_content[a], response_content[b][1]), (a, b))
    if not as_gold:
        _refuse_own_export(project, records, prompts, pairs, response_content, pair_source)

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

    # A row whose texts the project holds as a pair under other model names (a chosen-and-rejected row, or a row
    # naming its models where the pair names none), in either order, is that pair: (its key, whether the row's A is
    # the pair's B).
    record_match: list[tuple[tuple[int, int], bool] | None] = [
        _match_by_content(record, prompt_id, responses, pairs, pair_content, unnamed)
        for record, prompt_id in zip(records, record_prompt)]
    new_responses: dict[tuple[int, str, str], Response] = {}
    for record, prompt_id, match in zip(records, record_prompt, record_match):
        if record.response_a is None or match is not None:
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
    record_pair: list[tuple[int, int] | None] = []
    record_sign: list[int] = []  # -1 where the row's A is its pair's B: its choices are turned to face the pair
    held_before = set(pairs)
    for record, prompt_id, match in zip(records, record_prompt, record_match):
        if record.response_a is None:
            record_pair.append(None)
            record_sign.append(1)
            continue
        if match is not None:
            key, flipped = match
        else:
            key = (responses[(prompt_id, record.model_a, content_hash(record.response_a))],
                   responses[(prompt_id, record.model_b, content_hash(record.response_b))])
            # The same two responses the other way round, earlier in this file.
            flipped = record.chosen_rejected and key not in pairs and key not in new_pairs and key[::-1] in new_pairs
            key = key[::-1] if flipped else key
        record_pair.append(key)
        record_sign.append(-1 if flipped else 1)
        gold = record.judgments[0].choice if as_gold and record.judgments else record.gold_choice
        gold = -gold if flipped and gold is not None else gold
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
        relabelled: list[Record] = []  # another project's export rows that added a label to a pair from its source
        named_onto_unnamed: list[Record] = []  # rows naming their models that added a judgment to a pair naming none
        already_judged: list[tuple[Record, str]] = []  # labels skipped: a pair from elsewhere holds them already
        for n, (record, key, sign, match) in enumerate(zip(records, record_pair, record_sign, record_match), start=1):
            added = len(new_judgments)
            for judged in record.judgments if key is not None else []:
                pair_id = pairs[key]
                choice, criteria = judged.choice * sign, {k: v * sign for k, v in judged.criteria.items()}
                # Content-keyed, with a counter so that two identical rows in one file stay two judgments.
                base = hashlib.sha256(repr((record.source.split(":", 1)[0], pair_id, judged.rater, choice,
                                            judged.rationale, judged.both_bad, sorted(criteria.items()),
                                            judged.confidence)).encode()).hexdigest()
                seen_keys[base] = seen_keys.get(base, 0) + 1
                external_key = f"{base}#{seen_keys[base]}"
                if external_key in judgment_keys:
                    # The same label by the same rater on this pair, from another file (another project's export of
                    # this one, say): skipped, so no vote counts twice, and said. A second import of a file is not.
                    if (external_key in held_keys and not imported_before
                            and pair_source.get(pair_id) != record.source):
                        already_judged.append((record, judged.rater))
                    continue
                judgment_keys.add(external_key)
                new_judgments.append(Judgment(
                    project_id=pid, pair_id=pair_id, rater_id=raters[judged.rater], choice=choice,
                    both_bad=judged.both_bad, criteria=criteria, rationale=judged.rationale, kind="import",
                    external_key=external_key, confidence=judged.confidence))
            # Any export row: its pair may have reached the other project through an export of this one.
            if len(new_judgments) > added and record.exported_from and key in held_before:
                relabelled.append(record)
            elif len(new_judgments) > added and match is not None and not record.chosen_rejected:
                named_onto_unnamed.append(record)
            if progress and (n % 500 == 0 or n == len(records)):
                progress(n, len(records))
        session.add_all(new_judgments)
        result.judgments = len(new_judgments)
        _claim_imported(session, new_judgments)
        if relabelled:
            _warn_rows(relabelled, f"another project's export of pairs this project already holds: each added its "
                       f"label as one more judgment, by {relabelled[0].judgments[0].rater!r}; where both projects "
                       f"took their votes from the same place (one source, or this project's own export), each now "
                       f"counts twice")
        if named_onto_unnamed:
            # The other way round: the pairs came first from an export (say), and now the votes it was drawn from.
            _warn_rows(named_onto_unnamed, "the same prompt and texts as a pair this project already holds under no "
                       "model name (stored from rows of a chosen and a rejected response, such as another project's "
                       "export): each added its judgment to that pair instead of storing the pair again; where those "
                       "rows' labels were drawn from the same votes (an export of this same file), each vote now "
                       "counts twice")
        if already_judged:
            raters_named = ", ".join(repr(r) for r in dict.fromkeys(r for _, r in already_judged))
            _warn_rows([r for r, _ in already_judged],
                       f"labels this project already holds: their pair came from another import and has the same "
                       f"judgment by {raters_named} (another project's export of this file, say); "
                       f"{len(already_judged)} labels skipped, so that no vote counts twice")
    session.flush()
    refresh_planner_statistics(session, ["prompt", "response", "pair", "judgment"])
    audit(session, "import", actor_id, pid, **result.as_dict())
    return result


def _warn_rows(rows: list[Record], what: str) -> None:
    """One warning for rows of one kind: the first named by its place, the rest counted."""
    more = f" and {len(rows) - 1} more rows are" if len(rows) > 1 else " is"
    warn(f"{rows[0].where}: this row{more} {what}")


def _match_by_content(
    record: Record, prompt_id: int, responses: dict[tuple[int, str, str], int], pairs: dict[tuple[int, int], int],
    pair_content: dict[tuple[int, str, str], tuple[int, int]], unnamed: set[int],
) -> tuple[tuple[int, int], bool] | None:
    """The project's pair of the same prompt and texts, in either order, that a record is where it is not the pair of
    its own two responses (model names and order as the record gives them): (the pair's key, whether the record's A
    is the pair's B), or None.

    The texts decide where one side names no model and no order: a chosen-and-rejected record (TRL's, HH's, an
    export's) is any such pair; a record that names its models (summarize's policies) is such a pair whose responses
    are `unnamed`, stored from chosen-and-rejected rows (an export imported first). A record of a presentation order
    that names no model (a generic row without model_a and model_b) keeps its order: (y, x) is not (x, y)."""
    if record.response_a is None or not (record.chosen_rejected or record.model_a or record.model_b):
        return None
    a, b = content_hash(record.response_a), content_hash(record.response_b)
    if (responses.get((prompt_id, record.model_a, a)), responses.get((prompt_id, record.model_b, b))) in pairs:
        return None
    for content, flipped in (((prompt_id, a, b), False), ((prompt_id, b, a), True)):
        key = pair_content.get(content)
        if key is not None and (record.chosen_rejected or unnamed.issuperset(key)):
            return key, flipped
    return None


def _refuse_own_export(
    project: Project, records: list[Record], prompts: dict[str, int], pairs: dict[tuple[int, int], int],
    response_content: dict[int, tuple[int, str]], pair_source: dict[int, str],
) -> None:
    """UserError at the first row of `prefloop export` written from this project's own pair (its pair_id is that
    pair's id, with the same prompt, the same two responses and the same source; another database's export may
    reuse the id): its label is the vote of the pair's judgments, and importing it would add it beside them, one
    more judgment each."""
    exported = {r.exported_from[0] for r in records if r.exported_from and r.response_a is not None}
    if not exported:
        return
    own = {i: (response_content[a], response_content[b]) for (a, b), i in pairs.items() if i in exported}
    for record in records:
        if not record.exported_from or record.exported_from[0] not in own or record.response_a is None:
            continue
        (prompt_id, a), (_, b) = own[record.exported_from[0]]
        if prompts.get(content_hash(record.prompt)) == prompt_id and sorted((a, b)) == sorted(
                (content_hash(record.response_a), content_hash(record.response_b))) \
                and record.exported_from[1] == pair_source[record.exported_from[0]]:
            pair_id = record.exported_from[0]
            raise UserError(
                f"{record.where}: pair_id {pair_id} is pair {pair_id} of this project ({project.name}), the same "
                f"prompt and responses: the file is this project's own export, and importing it again would count "
                f"each pair's judgments twice. Nothing was imported; import it into another project, or with "
                f"--as-gold to make its answers the pairs' known answers")


def _claim_imported(session: Session, judgments: list[Judgment]) -> None:
    """Imported judgments take overlap slots as judgments made in the app do: each pair's `n_claimed` goes up by the
    judgments this import added to it.

    An increment, as collect.assign claims a slot, never a recount: on PostgreSQL a recount from subqueries reads the
    assignments as they were when its statement began, so a claim committed while it ran was written over and its
    slot handed out again. Pairs are updated in id order, so two imports lock them in the same order."""
    added = Counter(j.pair_id for j in judgments)
    if added:
        pair = Pair.__table__
        session.execute(
            update(pair).where(pair.c.id == bindparam("pair")).values(n_claimed=pair.c.n_claimed + bindparam("added")),
            [{"pair": pair_id, "added": n} for pair_id, n in sorted(added.items())])


@dataclass
class ParsedFile:
    """A file read and checked, ready to write. Parsing needs no database, so it happens before a
    transaction is opened (on SQLite, a transaction holds the one write lock)."""

    path: Path
    format: str
    records: list[Record]
    sha256: str


def read_file(path: str | Path, format: str = "auto", *, rater: str | None = None) -> ParsedFile:
    """Parse and check a file (or a save_to_disk folder); UserError naming file, line and field."""
    path = Path(path)
    format = detect_format(path) if format == "auto" else format
    return ParsedFile(path, format, read_records(path, format, rater), _sha256(path) if path.is_file() else "")


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
    imported_before = bool(parsed.sha256) and session.scalar(select(ImportRun.id).where(
        ImportRun.project_id == project.id, ImportRun.sha256 == parsed.sha256).limit(1)) is not None
    result = import_records(session, project, parsed.records, as_gold=as_gold, actor_id=actor_id, progress=progress,
                            imported_before=imported_before)
    session.add(ImportRun(project_id=project.id, path=str(parsed.path), format=parsed.format, sha256=parsed.sha256,
                          counts=result.as_dict()))
    return result


def import_file(
    session: Session,
    project: Project,
    path: str | Path,
    format: str = "auto",
    *,
    rater: str | None = None,
    as_gold: bool = False,
    actor_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import a file (or a save_to_disk folder) into a project, atomically."""
    return import_parsed(session, project, read_file(path, format, rater=rater), as_gold=as_gold, actor_id=actor_id,
                         progress=progress)


def import_dataset(
    session: Session, project: Project, dataset: Any, format: str = "generic", *, name: str = "dataset",
    rater: str | None = None, as_gold: bool = False, actor_id: int | None = None,
) -> ImportResult:
    """Import any `datasets` dataset (or list of dicts) in one of the supported row formats."""
    records = records_from_dataset(dataset, format, name, rater)
    return import_records(session, project, records, as_gold=as_gold, actor_id=actor_id)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

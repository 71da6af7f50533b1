"""Prompts and preference pairs for alignment: read, checked, and fitted to a token budget.

Prompts come as a file (JSONL, JSON, CSV, Parquet, or a `save_to_disk` folder), a `datasets.Dataset`,
or a Python list; each row has a `prompt` that is a string (one user turn) or a list of messages.
A list of conversations is accepted as it is. `ProjectPrompts` names a project in the collection
database instead: its prompts, or for DPO its judged pairs, exported as `prefloop export` would.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from transformers import PreTrainedTokenizerBase

from collect.errors import UserError, first_line
from collect.formats import (dataset_dir_rows, detect_format, one_split, parse_conversation, read_records, read_table,
                             records_from_dataset)

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class ProjectPrompts:
    """A project in the collection database as the source of prompts (and, for dpo, of preference pairs)."""

    project: str
    """The project's name or id."""
    db: str | None = None
    """Database URL; None: $PREFLOOP_DB, else sqlite:///prefloop.db."""

    def __str__(self) -> str:
        # What prefloop.json records: never the URL, which may hold a password.
        return f"project:{self.project}"


def _project_prompts(source: ProjectPrompts) -> list[Conversation]:
    """The project's prompts that end with a user turn (the others have nothing to answer), in id order."""
    from collect.generate import select_prompts

    with _project_session(source) as (session, project):
        return [c for _, c in select_prompts(session, project) if c and c[-1]["role"] == "user"]


def _project_preferences(source: ProjectPrompts) -> tuple[list[dict[str, Any]], int]:
    """The project's judged pairs as `prefloop export` writes them (default majority vote), and how many
    pairs came out as ties or both-bad (no preference)."""
    from collect.export import preference_rows

    with _project_session(source) as (session, project):
        rows, ties, counts = preference_rows(session, project)
    if not rows:
        raise UserError(f"{source}: no judged preference pairs to train on ({len(ties)} ties or both-bad, "
                        f"{counts['unjudged']} unjudged)")
    return rows, len(ties)


@contextmanager
def _project_session(source: ProjectPrompts) -> Iterator[tuple[Any, Any]]:
    """(session, project) for `source`; UserError when there is no database or no such project."""
    from collect import db
    from collect.projects import get_project

    with db.existing_session(source.db) as session:
        yield session, get_project(session, source.project)


def read_prompts(source: Any, limit: int | None = None) -> list[Conversation]:
    """Checked conversations, each ending with a user turn. Raises UserError naming the row at fault."""
    conversations = [_checked(value, where) for where, value in _prompt_values(source)]
    if not conversations:
        raise UserError(f"{_name(source)}: no prompts")
    return conversations[:limit] if limit else conversations


def _checked(value: Any, where: str) -> Conversation:
    if value is None or value == "" or value == []:
        raise UserError(f"{where}: field 'prompt': is empty")
    messages = parse_conversation(value, where)
    if messages[-1]["role"] != "user":
        raise UserError(f"{where}: field 'prompt': the last message must be the user's, to be answered")
    return messages


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path, ProjectPrompts)) else type(source).__name__


def _prompt_values(source: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(source, ProjectPrompts):
        for i, conversation in enumerate(_project_prompts(source), start=1):
            yield f"{source}: prompt {i}", conversation
        return
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise UserError(f"{path}: no such file")
        for where, row in dataset_dir_rows(path) if path.is_dir() else read_table(path):
            if "prompt" not in row:
                raise UserError(f"{where}: field 'prompt': is missing (columns: {', '.join(row)})")
            yield where, row["prompt"]
        return
    if isinstance(source, Sequence) or hasattr(source, "column_names"):
        for i, row in enumerate(one_split(source, "prompts"), start=1):
            where = f"prompts: row {i}"
            if isinstance(row, dict):
                if "prompt" not in row:
                    raise UserError(f"{where}: field 'prompt': is missing (columns: {', '.join(row)})")
                row = row["prompt"]
            yield where, row
        return
    raise UserError(f"prompts: expected a file, a dataset or a list of conversations, got {type(source).__name__}")


def read_preferences(source: Any, limit: int | None = None) -> tuple[list[dict[str, Conversation]], int]:
    """Preference pairs as TRL's conversational rows (`prompt`, `chosen` and `rejected` message lists), and
    the number of ties skipped.

    Accepts what collect/ exports (TRL format, plain or conversational), raw HH-RLHF files, and a project in
    the collection database. A pair whose judgments favour the second response is flipped; a tie (or, from
    a project, a pair most raters marked both-bad) teaches nothing to DPO and is skipped, as is a pair whose two
    responses are the same text.
    """
    ties = 0
    if isinstance(source, ProjectPrompts):
        exported, ties = _project_preferences(source)
        records = records_from_dataset(exported, "trl", str(source))
    elif isinstance(source, (str, Path)):
        path = Path(source)
        fmt = "hh-rlhf" if path.is_file() and detect_format(path) == "hh-rlhf" else "trl"
        records = read_records(path, fmt)
    else:
        records = records_from_dataset(source, "trl", "preferences")
    rows = []
    for record in records:
        if record.response_a is None or record.response_b is None:
            raise UserError(f"{record.where}: a preference row needs both 'chosen' and 'rejected'")
        vote = sum(j.choice for j in record.judgments)
        # Both sides bad is no preference even where the raters leaned (an export's side file keeps the lean), as
        # export leaves out a pair most raters marked both-bad.
        both_bad = 2 * sum(j.both_bad for j in record.judgments) > len(record.judgments)
        if vote == 0 or both_bad or record.response_a == record.response_b:  # the same answer twice: as a tie
            ties += 1
            continue
        chosen, rejected = (record.response_a, record.response_b) if vote > 0 else (record.response_b, record.response_a)
        rows.append({
            "prompt": record.prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        })
    if not rows:
        raise UserError(f"{_name(source)}: no preference pairs (all rows are ties)")
    return (rows[:limit] if limit else rows), ties


def fit_prompt(tokenizer: PreTrainedTokenizerBase, messages: Conversation, max_tokens: int) -> Conversation | None:
    """The conversation as it is if its rendered prompt fits `max_tokens` (and the chat template takes it), else
    with its oldest turns dropped until it does, restarting on a user turn.

    Keeps the end, where the question to answer is; a system message stays. None when even the last
    user turn alone is too long.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    for start in range(len(turns)):
        if start > 0 and turns[start]["role"] != "user":
            continue  # a cut conversation restarts on a user turn; a whole one stays as it is
        candidate = system + turns[start:]
        try:
            length = prompt_length(tokenizer, candidate)
        except Exception:  # noqa: BLE001 (jinja2's TemplateError)
            if start == 0 and turns[0]["role"] != "user":
                continue  # templates that want roles to alternate from a user turn refuse a leading assistant turn
            raise
        if length <= max_tokens:
            return candidate
    return None


def prompt_length(tokenizer: PreTrainedTokenizerBase, messages: Conversation) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    return len(ids)


def fit_prompts(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Conversation], max_tokens: int, what: str = "prompts"
) -> tuple[list[Conversation], list[int]]:
    """Fitted prompts and the indices of those kept; raises UserError when none fit."""
    kept, indices = [], []
    for i, messages in enumerate(conversations):
        try:
            fitted = fit_prompt(tokenizer, messages, max_tokens)
        except UserError:
            raise
        except Exception as e:  # a template raises on roles or turn orders it does not take (jinja2's TemplateError)
            start = messages[0]["content"][:40] if messages else ""
            raise UserError(f"{what}: the prompt that starts {start!r}: the policy's chat template refuses it "
                            f"({first_line(e)})") from None
        if fitted is not None:
            kept.append(fitted)
            indices.append(i)
    if not kept:
        raise UserError(f"{what}: every prompt is longer than max_prompt_length={max_tokens} tokens")
    return kept, indices

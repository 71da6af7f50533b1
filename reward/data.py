"""Preference data in, token ids out: the one encoding shared by training, evaluation and scoring.

A preference dataset is TRL's format: `prompt` (a list of {role, content} messages, or a string),
`chosen` and `rejected` (each a list holding the assistant message, or a string), plus optional
`margin`, `pair_id`, `source` and any other columns. `prompt` may be absent when `chosen` and
`rejected` are whole conversations (TRL's implicit-prompt format), also as strings in Anthropic HH's layout.

A conversation becomes text through the tokenizer's chat template; tokenizers without one (BERT-style
encoders such as `minilm-l6`) get a plain `User: ...` / `Assistant: ...` layout. Over-long sequences
are truncated from the LEFT by default: chosen and rejected usually share the prompt and differ in
the last turn, so the end is what the reward model must see. Nothing is ever dropped. Training cuts an
over-long pair's two sides alike, the same prompt tokens from both (`Encoder.encode_pair`); scoring sees one
conversation at a time and cuts it alone (`Encoder.encode`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from collect.errors import UserError, first_line, warn
from collect.formats import (hh_sides_are_dialogues, is_hh_dialogue, is_hh_prompt, labels_named, load_dataset_dir,
                             marked_tie, one_split, rated_worse, read_table, shared_prompt_turns, sharegpt_hint,
                             sides_hold_prompt, split_hh_dialogue, split_hh_prompt)

if TYPE_CHECKING:
    from datasets import Dataset

Message = dict[str, str]
Conversation = list[Message]

REQUIRED_COLUMNS = ("chosen", "rejected")
TRUNCATION_SIDES = ("left", "right")
_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


# ----------------------------------------------------------------------------------------- loading


def load_rows(data: Any, what: str = "data", split: str | None = "train",
              unread: tuple[str, ...] = ()) -> tuple[Any, list[str]]:
    """A `datasets.Dataset` from a Dataset, a list of dicts, a Parquet/JSONL/JSON file (optionally .gz) or a
    `save_to_disk` folder, and where each row came from, for error messages: "prefs.jsonl:12" (a line of a
    JSON Lines file), "prefs.parquet: row 3" (counting from 1), "data[2]" (an index into a Dataset or list).
    Of a DatasetDict with several splits, `split` is read (`collect.formats.one_split`). `unread`: columns the
    caller ignores (`margin` under `--no-margin`), kept as text where their values mix kinds, not refused."""
    import datasets

    if data is None:
        raise UserError(f"{what}: none given (a file, a save_to_disk folder, a Dataset, a DataFrame or a list of rows)")
    data = one_split(data, what, split)
    if isinstance(data, list) and data:
        # Not Dataset.from_list, which takes its columns from the first row and drops keys only later rows have.
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise UserError(f"{what}[{i}]: expected a dict, got {type(row).__name__}")
        return _rows_to_dataset(what, [(f"{what}[{i}]", row) for i, row in enumerate(data)], unread)
    if isinstance(data, list):
        data = datasets.Dataset.from_list(data)  # empty: check_preferences says so
    if type(data).__name__ == "DataFrame":  # pandas, without importing it here
        data = datasets.Dataset.from_pandas(data, preserve_index=False)
    if isinstance(data, datasets.Dataset):
        return data, [f"{what}[{i}]" for i in range(len(data))]
    path = Path(str(data))
    if not path.exists():
        raise UserError(f"{what}: {path}: no such file or directory")
    name = path.name.lower().removesuffix(".gz")
    try:
        if path.is_dir():
            if not any(path.iterdir()):
                raise UserError(f"{path}: the folder is empty (expected a datasets save_to_disk folder)")
            loaded = load_dataset_dir(path, split)
            return loaded, [f"{path}: row {i + 1}" for i in range(len(loaded))]
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            gzipped = path.name.lower().endswith(".gz")
            if gzipped:  # Parquet compresses inside, but a gzipped one is read too
                import gzip
                import io

                with gzip.open(path) as packed:
                    table = pq.read_table(io.BytesIO(packed.read()))
                rows = table.num_rows
            else:
                # Read the footer first: datasets would log Arrow's error on a broken file before raising its own.
                rows = pq.read_metadata(path).num_rows
            if rows == 0:
                raise UserError(f"{path}: the file is empty (no rows)")
            loaded = datasets.Dataset(table) if gzipped else datasets.Dataset.from_parquet(str(path))
            return loaded, [f"{path}: row {i + 1}" for i in range(len(loaded))]
    except UserError:
        raise
    except Exception as e:  # datasets raises many types for unreadable files; name the file instead
        raise UserError(f"{path}: cannot read it as a dataset ({type(e).__name__}: {first_line(e)})") from None
    if name.endswith((".jsonl", ".json")):
        return _rows_to_dataset(path, list(read_table(path)), unread)
    raise UserError(f"{path}: unsupported file type (expected .parquet, .jsonl, .json or a save_to_disk folder)")


def _json_kind(value: Any) -> str:
    for kind, types in (("true/false", bool), ("a number", (int, float)), ("a string", str), ("a list", list)):
        if isinstance(value, types):
            return kind
    return "an object"


def _rows_to_dataset(source: Path | str, rows: list[tuple[str, dict[str, Any]]],
                     unread: tuple[str, ...] = ()) -> tuple[Any, list[str]]:
    """A Dataset with every key any row has (None where a row lacks it), and each row's place. A column that
    mixes kinds of value is refused, naming the first row that differs, where a pair or a scored conversation is
    read from it (prompt, chosen, rejected, margin, messages, completion: Arrow would turn a `true` among margins
    into 1.0, and text would turn a list of messages into one message of JSON); any other column (a rater's note,
    a category) is kept as text, so it neither stops training nor hides from the evaluation's breakdown."""
    import datasets

    if not rows:
        raise UserError(f"{source}: the file is empty (no rows)")
    columns = list(dict.fromkeys(key for _, row in rows for key in row))  # every key, in first-seen order
    values = {c: [row.get(c) for _, row in rows] for c in columns}
    read = {*REQUIRED_COLUMNS, "prompt", "margin", "messages", "completion"} - set(unread)  # a pair's or a score's
    for column in columns:
        kinds = [(place, _json_kind(row[column])) for place, row in rows if row.get(column) is not None]
        differ = next((kind for kind in kinds if kind[1] != kinds[0][1]), None)
        if differ is None:
            continue
        if column in read:
            raise UserError(f"{differ[0]}: field '{column}': {differ[1]} where {kinds[0][0]} has {kinds[0][1]}; "
                            "a column holds one kind of value")
        values[column] = _as_text(values[column])
    try:
        return datasets.Dataset.from_dict(values), [place for place, _ in rows]
    except Exception as e:  # pyarrow: lists or objects whose items share no type
        # In a column no pair is read from ([1, "a"] beside [2], or a metadata object whose fields vary): kept as
        # text too, not a reason to refuse the file.
        nested = [c for c in columns if c not in read and any(isinstance(v, (list, dict)) for v in values[c])]
        for column in nested:
            values[column] = _as_text(values[column])
        if nested:
            try:
                return datasets.Dataset.from_dict(values), [place for place, _ in rows]
            except Exception:
                pass
        for place, row in rows:  # a message of the wrong shape is the likely cause: name its line and field
            if any(side in row for side in REQUIRED_COLUMNS):
                pair_conversations(row, place)
        raise UserError(f"{source}: cannot build a dataset from its rows ({type(e).__name__}: {first_line(e)})") from None


def _as_text(values: list) -> list:
    """A column's values as text, JSON for what is not a string already (None stays None)."""
    return [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]


def load_preferences(data: Any, what: str = "data", use_margin: bool = True,
                     split: str | None = "train") -> Dataset:
    """Load and check a preference dataset; raise UserError naming the column or row at fault. With
    `use_margin=False` the `margin` column is not read, so not checked either. `split`: as in `load_rows`."""
    dataset, places = load_rows(data, what, split, unread=() if use_margin else ("margin",))
    check_preferences(dataset, places, data_name(data, what), use_margin)
    return dataset


IGNORE_MARGIN = "use_margin=False (`reward train --no-margin`)"
"""How margin errors name the switch that leaves the column unread, for Python and command-line users alike."""


def check_margins(dataset, places: list[str]) -> None:
    """UserError naming the row unless every row's `margin` is a finite number >= 0 (the export contract in
    ../shared/DESIGN.md)."""
    margins = dataset["margin"]
    for place, value in zip(places, margins):
        if value is None and all(m is None for m in margins):
            raise UserError(f"field 'margin': null in every row; drop the column, or train with {IGNORE_MARGIN}, "
                            "which ignores it")
        if value is None:
            raise UserError(f"{place}: field 'margin': missing or null where other rows have one (every row "
                            f"needs one; {IGNORE_MARGIN} ignores the column)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise UserError(f"{place}: field 'margin': expected a number, got {value!r}")
        # The loss asks r_chosen - r_rejected to exceed the margin: a negative one would ask less than a
        # preference (a signed strength toward one side, read as toward `chosen`, is the likely cause).
        if not 0 <= value < float("inf"):
            raise UserError(f"{place}: field 'margin': {value!r} is not a finite number >= 0 (how strongly "
                            f"'chosen' beats 'rejected'; {IGNORE_MARGIN} ignores the column)")


def check_preferences(dataset, places: list[str], name: str, use_margin: bool = True, scoring: bool = False) -> None:
    """UserError, naming the column or the row's place, unless every row is a usable preference pair; warnings
    about pairs read other than their author may have meant (`warn_misread_pairs`, `warn_ties`; `scoring`: the
    pairs are scored side by side, not read as preferences)."""
    if len(dataset) == 0:
        raise UserError(f"{name}: the dataset is empty")
    warn_unread_template_columns(dataset, name)
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{name}: missing column(s) {', '.join(missing)}: a preference dataset needs 'chosen' and "
            f"'rejected' (and usually 'prompt'); it has {', '.join(dataset.column_names) or 'no columns'} (two "
            "responses and a label: put the preferred one in 'chosen', leave ties out; summarize-from-feedback, "
            "AlpacaEval and HH files: `prefloop import` then `prefloop export`)"
        )
    if use_margin and "margin" in dataset.column_names:
        check_margins(dataset, places)
    warn_misread_pairs(dataset, places, name)
    warn_ties(dataset, places, name, scoring)


SHARED_START_CHARS = 20
"""Plain-text sides with no prompt that start with this many characters alike likely hold their question."""


def warn_misread_pairs(dataset, places: list[str], name: str) -> None:
    """Read every pair (a UserError names one that cannot be read), and warn once for each kind of pair read other
    than its author may have meant, counting them and naming the first."""
    roles: dict[str, str] = {}  # each role, where it first appears
    empty: list[str] = []
    no_reply: list[str] = []  # sides that end with another turn than the assistant's: HH's "...\n\nHuman:" cut there
    no_context: list[str] = []  # rows with no prompt, and no user turn in their sides
    shared_start: list[str] = []  # rows with no prompt whose plain-text sides start alike: the question, likely
    calls: list[str] = []  # rows with tool calls, which prefloop does not read
    out_of_order: list[str] = []  # rows read with two user turns in a row, or a system turn after the first
    unshared: list[str] = []  # rows whose sides answer different conversations: no prompt turn in common
    prompted = False
    for place, row in zip(places, dataset.select_columns([c for c in ("prompt", "chosen", "rejected")
                                                          if c in dataset.column_names])):
        chosen, rejected = pair_conversations(row, place)
        for m in chosen + rejected:
            roles.setdefault(m["role"], place)
        empty += [f"{place}, {side}" for side, turns in (("chosen", chosen), ("rejected", rejected))
                  if turns[-1]["role"] == "assistant" and not turns[-1]["content"].strip()]
        no_reply += [f"{place}, {side}" for side, turns in (("chosen", chosen), ("rejected", rejected))
                     if turns[-1]["role"] != "assistant"]
        prompted = prompted or bool(row.get("prompt"))
        if not row.get("prompt") and not any(m["role"] == "user" for m in chosen + rejected):
            no_context.append(place)
            if all(isinstance(row[side], str) for side in REQUIRED_COLUMNS):
                alike = len(os.path.commonprefix([row["chosen"], row["rejected"]]).strip())
                if alike >= SHARED_START_CHARS:
                    shared_start.append(f"{place}, {alike} characters alike")
        if any(m["role"] == "user" for m in chosen + rejected) and not shared_prompt_turns(chosen, rejected):
            unshared.append(place)
        roles_in_order = [[m["role"] for m in side] for side in (chosen, rejected)]
        if any("system" in order[1:] or ("user", "user") in zip(order, order[1:]) for order in roles_in_order):
            out_of_order.append(f"{place}: {', '.join(roles_in_order[0])}")
        if any(isinstance(m, dict) and m.get("tool_calls") for side in ("prompt", "chosen", "rejected")
               if isinstance(row.get(side), list) for m in row[side]):
            calls.append(place)
    warn_empty_responses(name, empty)
    if no_reply:
        warn(f"{name}: {len(no_reply)} side(s) end with a turn that is not the assistant's (first: {no_reply[0]}): "
             "their reward is read after it, with no response to judge")
    if not prompted and len(no_context) == len(dataset):
        # Intel/orca_dpo_pairs keeps its question in `question`, and others in `instruction` or `input`: unread.
        unread = [column for column in dataset.column_names if _holds_text(dataset, column)]
        warn(f"{name}: no pair has a prompt, nor a user turn in its sides: every response is read without the "
             "question it answers" + (f" (column(s) {', '.join(unread)} hold text prefloop does not read: the "
                                      "question belongs in 'prompt')" if unread else ""))
    elif "system" in dataset.column_names and "system" not in roles and _holds_text(dataset, "system", 1):
        warn(f"{name}: column system holds text prefloop does not read (a system prompt, as jondurbin/truthy-dpo "
             "keeps it): put it first in 'prompt', as a message of role system")
    if out_of_order:
        warn(f"{name}: {len(out_of_order)} pair(s) read with two user turns in a row, or a system turn after the "
             f"first (first: {out_of_order[0]}): a 'prompt' list that the sides repeat in other words, or turns out "
             "of order; check 'prompt' against the sides' first turns")
    if unshared:
        warn(f"{name}: {len(unshared)} pair(s) have sides that share no prompt turns (first: {unshared[0]}): two "
             "answers to different conversations are compared, not two answers to one prompt (rows out of line?); "
             "`prefloop import` refuses such pairs")
    if prompted and no_context:
        warn(f"{name}: {len(no_context)} pair(s) have no prompt where others have one, and no user turn in "
             f"their responses (first: {no_context[0]}): they are read without the question they answer")
    if shared_start:
        warn(f"{name}: {len(shared_start)} pair(s) have no prompt and plain-text sides that start alike (first: "
             f"{shared_start[0]}): each side is read as one response, its start included, and pairs are not "
             "grouped by it when pairs are held out or resampled; if the start is the question, put it in a 'prompt' "
             "column, or write each side as messages")
    if calls:
        warn(f"{name}: {len(calls)} pair(s) have turns with tool_calls (first: {calls[0]}): prefloop reads "
             "each turn's role and content, so the calls themselves are not seen")
    unknown = sorted(set(roles) - set(_ROLE_NAMES) - {"tool"})
    if unknown:
        warn(f"{name}: role(s) {', '.join(map(repr, unknown))} are not system, user, assistant or tool "
             f"(first: {roles[unknown[0]]}): a chat template renders them as they are, or refuses them")


def _holds_text(dataset, column: str, mean_chars: int = 12) -> bool:
    """Whether a column holds text rather than labels or ids: its first 1,000 rows' strings average `mean_chars`
    characters or more, most with a space in them ("What is 2+2?" is text; "model_a" and a sha256 are not). A list
    column counts by the messages in it (UltraInteract keeps its question in `trajectory`, a list of turns)."""
    if column in (*REQUIRED_COLUMNS, "tools", "chat_template_kwargs"):  # the last two have their own warning
        return False
    values = [text for value in dataset.select(range(min(len(dataset), 1000)))[column]
              for text in _message_texts(value) if text.strip()]
    spaced = sum(" " in v for v in values)
    return bool(values) and sum(map(len, values)) >= mean_chars * len(values) and spaced > len(values) / 2


def _message_texts(value: Any) -> list[str]:
    """A value's strings, each apart: itself if a string; in a list, its strings and the content of its messages
    (OpenAI's `content`, ShareGPT's `value`); not the other strings in dicts (metadata, tool schemas)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    texts = [m if isinstance(m, str) else m.get("content", m.get("value")) if isinstance(m, dict) else None
             for m in value]
    return [text for text in texts if isinstance(text, str)]


def warn_ties(dataset, places: list[str], name: str, scoring: bool = False) -> None:
    """Rows the columns beside their pair mark as ties (`collect.formats.marked_tie`, which import reads too: equal
    ratings of the two sides, a label saying tie, also as a ClassLabel, a 0/1 tie column at 1), trained as a
    preference for `chosen` all the same; and rows whose ratings put `rejected` above `chosen`
    (`collect.formats.rated_worse`). Each way said once, counted, the first row named. `scoring`: the sides are
    only scored, so a tie is said to be scored as its columns name its sides."""
    beside = [c for c in dataset.column_names if c not in (*REQUIRED_COLUMNS, "prompt", "messages")]
    if not beside:
        return
    ties: dict[str, list[str]] = {}  # how a tie is marked: the rows so marked
    worse: dict[str, list[str]] = {}
    for place, row in zip(places, labels_named(dataset.select_columns(beside))):
        tie, swapped = marked_tie(row), rated_worse(row)
        if tie is not None:
            ties.setdefault(tie[0], []).append(place)
        if swapped is not None:
            worse.setdefault(swapped, []).append(place)
    tied = {place for where in ties.values() for place in where}
    if len(tied) == len(dataset) and not scoring:  # `align --method dpo` refuses such a file too
        marks = "; ".join(ties)
        raise UserError(f"{name}: every pair is marked a tie ({marks}): there is no preference to train on or "
                        "measure (an export's side file of ties, named by mistake?)")
    read = ("scored as reward_chosen and reward_rejected all the same, though neither side is preferred" if scoring
            else "read as a preference for 'chosen' all the same; leave them out")
    for marked, where in ties.items():
        warn(f"{name}: {len(where)} pair(s) have {marked} (first: {where[0]}): ties, {read}")
    for rated, where in worse.items():
        better = "lower rank" if "rank" in rated else "higher rating"
        warn(f"{name}: {len(where)} pair(s) have {rated} (first: {where[0]}): where a {better} is better, 'chosen' "
             "is the side rated worse; check which side is which")


def warn_empty_responses(name: str, empty: list[str]) -> None:
    """Raters did prefer an empty answer or one over it (4 of HH harmless's 2,312 pairs, which import and export
    keep): a response like any other, read as an empty last turn, not bad input that stops the run; counted, and the
    first named (`empty`: where each is)."""
    if empty:
        warn(f"{name}: {len(empty)} response(s) are empty (first: {empty[0]}); they are scored as an empty "
             "last turn")


def warn_unread_template_columns(dataset, name: str) -> None:
    """TRL passes a row's `chat_template_kwargs` and `tools` to the chat template; prefloop renders each
    conversation with the template alone, so a template that reads them sees other text here: said, not hidden."""
    unread = [column for column in ("chat_template_kwargs", "tools") if column in dataset.column_names]
    if unread:
        warn(f"{name}: column(s) {', '.join(unread)} not used: TRL passes them to the chat template, prefloop "
             "renders each conversation with the template alone")


# ------------------------------------------------------------------------------------ conversations


def as_messages(value: Any, where: str, field: str, role: str) -> Conversation:
    """One field's messages: a list of {role, content} as given, checked; a prompt string in Anthropic HH's layout
    (`collect.formats.is_hh_prompt`) split into its turns; any other string one message in `role`."""
    if field == "prompt" and is_hh_prompt(value):
        return split_hh_prompt(value, where, field)
    if isinstance(value, str):
        if field == "prompt":
            return [{"role": role, "content": value}] if value.strip() else []  # a blank prompt is no prompt
        return [{"role": role, "content": value}]  # an empty response is a response (HH has a few; see below)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        out = []
        for j, m in enumerate(value):
            if not isinstance(m, dict) or "content" not in m or "role" not in m:
                raise UserError(f"{where}: field '{field}[{j}]': expected a message {{role, content}}"
                                + sharegpt_hint(m))
            if m["content"] is None:  # a key one message lacks reads as None once the rows share columns
                called = " (a tool call: prefloop reads each turn's role and content, not its tool_calls)"
                raise UserError(f"{where}: field '{field}[{j}].content': is missing or null"
                                + (called if m.get("tool_calls") else ""))
            if not isinstance(m["content"], str):
                raise UserError(f"{where}: field '{field}[{j}].content': expected a string")
            if not isinstance(m["role"], str) or not m["role"]:
                raise UserError(f"{where}: field '{field}[{j}].role': expected a role name, got {m['role']!r}")
            out.append({"role": m["role"], "content": m["content"]})
        if not out and field != "prompt":  # no message at all; a message with empty content is an empty response
            raise UserError(f"{where}: field '{field}': is empty")
        return out
    if value is None:  # a key one row lacks reads as None once the rows share columns
        raise UserError(f"{where}: field '{field}': is missing or null")
    raise UserError(f"{where}: field '{field}': expected a string or a list of messages, got {type(value).__name__}")


def pair_conversations(row: dict[str, Any], where: str = "row") -> tuple[Conversation, Conversation]:
    """The chosen and rejected whole conversations (prompt + completion) of one preference row. Strings in
    Anthropic HH's layout ("\n\nHuman: ...\n\nAssistant: ...": both sides whole dialogues with no prompt, as HH's
    files have them, or a prompt that ends "Assistant:", as Dahoas/rm-static has it) are split into their turns, so
    a chat template renders the dialogue they hold."""
    prompt = as_messages(row.get("prompt") or [], where, "prompt", "user")
    hh_prompt = is_hh_prompt(row.get("prompt"))
    if hh_sides_are_dialogues(row, where) or not prompt and any(is_hh_dialogue(row.get(side))
                                                                 for side in REQUIRED_COLUMNS):
        # Whole dialogues in HH's layout; with no prompt, one side a dialogue and the other not is refused (the
        # split names the other), as `prefloop import` refuses it.
        chosen, rejected = (split_hh_dialogue(row.get(side), where, side) for side in REQUIRED_COLUMNS)
    else:
        # Dahoas/rm-static's responses keep the space that followed the prompt's "Assistant:".
        chosen, rejected = (as_messages(row[side].strip() if hh_prompt and isinstance(row.get(side), str)
                                        else row.get(side), where, side, "assistant") for side in REQUIRED_COLUMNS)
    if sides_hold_prompt(row.get("prompt"), prompt, [chosen, rejected]):
        return chosen, rejected  # whole conversations: the prompt read once, or left unread, as TRL reads it
    return prompt + chosen, prompt + rejected


def data_name(data: Any, in_memory: str = "data") -> str:
    """How errors name a dataset: a file or folder as given, data in memory as `in_memory` (not its contents)."""
    return str(data) if isinstance(data, (str, Path)) else in_memory


def absolute_name(path: Any) -> str:
    """A file or folder that exists as its absolute path, for reports read from elsewhere; anything else (a Hub
    id, an alias) as given."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def data_label(field: str, data: Any) -> str:
    """How messages name a dataset: "eval_data held.jsonl" for a file or folder, the field alone for data in
    memory."""
    return f"{field} {data}" if isinstance(data, (str, Path)) else field


TRAINING_PAIRS_FILE = "training_pairs.txt"
"""In a reward-model directory: a digest of each pair it trained on (`pair_digests`), one a line, sorted."""


def trained_pairs(model_dir: str | Path) -> set[str]:
    """The digests of the pairs a reward model trained on, from its TRAINING_PAIRS_FILE (empty for a model trained
    elsewhere or by an earlier prefloop)."""
    path = Path(model_dir) / TRAINING_PAIRS_FILE
    return set(path.read_text().split()) if path.is_file() else set()


def pair_digests(rows) -> list[str]:
    """Each pair as a 64-bit digest of the two conversations the model reads, so a pair matches across formats
    (an implicit prompt or an explicit one, a string or a message list) without keeping its text."""
    return [hashlib.sha256(json.dumps(pair_conversations(row), sort_keys=True, ensure_ascii=False).encode())
            .hexdigest()[:16] for row in rows]


def rows_by_prompt(dataset, seed: int) -> list[list[int]]:
    """The row indices of each distinct prompt, prompts in an order shuffled by `seed`. A row with no prompt (no
    `prompt` column, or an empty or null one there) has for its prompt the turns its chosen and rejected
    conversations share up to their last shared user turn (TRL's implicit prompt, read as import and the data
    checks read it: `shared_prompt_turns`); a row whose sides share none is a group of its own."""
    import random

    prompts = dataset["prompt"] if "prompt" in dataset.column_names else [None] * len(dataset)
    keys = []
    for i, prompt in enumerate(prompts):
        turns = as_messages(prompt or [], f"data[{i}]", "prompt", "user")
        if not turns:  # no prompt, or a blank one, is not one prompt that every such row shares
            chosen, rejected = pair_conversations(dataset[i], f"data[{i}]")
            turns = chosen[:shared_prompt_turns(chosen, rejected)]
        keys.append(json.dumps(turns, sort_keys=True, default=str) if turns else f"row {i}")
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    return order


def prompt_of_rows(dataset) -> list[int]:
    """Each row's prompt as a number, the same for the pairs that share a prompt (as `rows_by_prompt` groups
    them): what resampling and tests over prompts cluster on."""
    prompt_of = [0] * len(dataset)
    for prompt, rows in enumerate(rows_by_prompt(dataset, seed=0)):
        for row in rows:
            prompt_of[row] = prompt
    return prompt_of


def render(tokenizer, conversation: Conversation) -> tuple[str, bool]:
    """(text, add_special_tokens): the chat template when the tokenizer has one, else a plain layout."""
    if getattr(tokenizer, "chat_template", None):
        # The template already writes BOS/role tokens; the tokenizer must not add them twice.
        try:
            return tokenizer.apply_chat_template(conversation, tokenize=False), False
        except Exception as e:  # templates raise on roles or turn orders they do not take (jinja2's TemplateError)
            raise UserError(f"the model's chat template refuses this conversation ({first_line(e)})") from None
    text = "\n\n".join(f"{_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in conversation)
    if _needs_eos(tokenizer):
        # Decoder tokenizers without a template (GPT-2 style) add no end marker; the reward is read
        # at the last token, so end every sequence the same way, as TRL does for plain text.
        text += tokenizer.eos_token
    return text, True


def _needs_eos(tokenizer) -> bool:
    if not tokenizer.eos_token:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return ids[-1] not in set(tokenizer.all_special_ids)


def check_length_settings(max_length: int | None, truncation_side: str,
                          names: tuple[str, str] = ("max_length", "truncation_side")) -> None:
    """UserError unless `truncation_side` is left or right and `max_length` (None: no limit) is at least 8 tokens;
    `names` are how the message names the two (training adds the CLI flags)."""
    if truncation_side not in TRUNCATION_SIDES:
        raise UserError(f"{names[1]} must be 'left' or 'right', got {truncation_side!r}")
    if max_length is not None and max_length < 8:
        raise UserError(f"{names[0]} must be at least 8 tokens, got {max_length}")


class Encoder:
    """Turns conversations into token ids with a fixed max length and truncation side.

    `encode` returns the ids and whether they were truncated. The settings are saved in the model directory, so
    scoring cuts each conversation as training cut its held-out pairs (training pairs with `encode_pair`'s
    `align` lose the same prompt tokens on both sides instead; scoring sees one conversation at a time).
    """

    def __init__(self, tokenizer, max_length: int | None, truncation_side: str = "left"):
        check_length_settings(max_length, truncation_side)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation_side = truncation_side
        tokenizer.truncation_side = truncation_side
        # The special tokens the tokenizer adds before and after the text ([CLS] ... [SEP]): a cut keeps them.
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        marked = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.leading_special = next((i for i in range(len(marked)) if marked[i:i + len(plain)] == plain), 0)
        self.trailing_special = len(marked) - len(plain) - self.leading_special

    def encode(self, conversation: Conversation) -> tuple[list[int], bool]:
        text, special = render(self.tokenizer, conversation)
        ids = self._ids(text, special)
        if self.max_length is None or len(ids) <= self.max_length:
            return ids, False
        return self._cut(ids, len(ids) - self.max_length, special), True

    def _ids(self, text: str, special: bool) -> list[int]:
        # verbose=False: the length is measured here on purpose; Transformers' "longer than the maximum
        # sequence length ... indexing errors" warning would alarm users about pairs truncated just below.
        return list(self.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])

    def _cut(self, ids: list[int], n: int, special: bool) -> list[int]:
        """`ids` less `n` tokens on the truncation side, the tokenizer's own special tokens kept at the edges (what
        the tokenizer's truncation gives; the tests check it)."""
        lead, trail = (self.leading_special, self.trailing_special) if special else (0, 0)
        if self.truncation_side == "left":
            return ids[:lead] + ids[lead + n:]
        return ids[:len(ids) - trail - n] + ids[len(ids) - trail:]

    def encode_pair(self, chosen: Conversation, rejected: Conversation,
                    align: bool = True) -> tuple[list[int], list[int], bool]:
        """Both sides' ids and whether either was truncated. With `align` (and left truncation), an over-long
        pair loses the same tokens from the start of its shared prompt on both sides, as many as its longer
        side must: the two sides then see the same window of the prompt and differ only in their responses
        (cut alone, the side with the shorter response would see more of the prompt), and on a decoder they
        still share their start, so the pair trains as one packed row (reward.shared_prompt). When the cut
        would reach into a response, or without `align`, each side is cut alone, as `encode` cuts it."""
        rendered = [render(self.tokenizer, side) for side in (chosen, rejected)]
        full = [self._ids(text, special) for text, special in rendered]
        special = rendered[0][1]
        over = [len(ids) - self.max_length if self.max_length is not None else 0 for ids in full]
        if max(over) <= 0:
            return full[0], full[1], False
        lead = self.leading_special if special else 0
        if align and self.truncation_side == "left" and lead + max(over) <= shared_start(*full):
            over = [max(over)] * 2
        chosen_ids, rejected_ids = (self._cut(ids, n, special) if n > 0 else ids for ids, n in zip(full, over))
        return chosen_ids, rejected_ids, True

    def encode_pairs(self, dataset: Dataset, use_margin: bool = True, desc: str = "data",
                     align: bool = True) -> tuple[Dataset, int]:
        """A dataset of `chosen_ids`, `rejected_ids`, `length` (and `margin`) ready for RewardTrainer,
        plus the number of pairs where either side was truncated (`align`: see `encode_pair`)."""
        import datasets

        columns: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], "length": []}
        truncated = 0
        for i, row in enumerate(dataset):
            chosen, rejected = pair_conversations(row, f"{desc}: row {i}")
            try:
                chosen_ids, rejected_ids, cut = self.encode_pair(chosen, rejected, align)
            except UserError as e:  # `i` counts the pairs left after the held-out split, not the file's rows
                raise UserError(f"{desc}: the pair that starts {chosen[0]['content'][:40]!r}: {e}") from None
            truncated += cut
            columns["chosen_ids"].append(chosen_ids)
            columns["rejected_ids"].append(rejected_ids)
            columns["length"].append(max(len(chosen_ids), len(rejected_ids)))
        if use_margin and "margin" in dataset.column_names:
            columns["margin"] = [float(m) for m in dataset["margin"]]
        return datasets.Dataset.from_dict(columns), truncated


def check_token_ids(sequences: Iterable[list[int]], model, what: str) -> None:
    """UserError when a token id is beyond the model's embeddings (a tokenizer that is not the model's, a copied
    tokenizer file, say) or a sequence is longer than the model's table of positions takes (`position_limit`:
    --max-length 1024 on a 512-position BERT): either would otherwise fail deep in the first forward pass, after
    the model has loaded."""
    rows = model.get_input_embeddings().num_embeddings
    limit = position_limit(model)
    highest, longest = -1, 0
    for ids in sequences:
        if ids:
            highest, longest = max(highest, max(ids)), max(longest, len(ids))
    if highest >= rows:
        raise UserError(f"{what}: the tokenizer gives token id {highest}, beyond the model's {rows} embeddings: "
                        "the tokenizer is not this model's")
    if limit is not None and longest > limit:
        raise UserError(f"{what}: a sequence of {longest} tokens, beyond the {limit} positions the model takes; set "
                        f"max_length (--max-length) to {limit} or less")


def position_limit(model) -> int | None:
    """The longest sequence a model with a learned table of absolute positions takes (BERT, RoBERTa, GPT-2); None
    where positions are relative or rotary (DeBERTa-v3, Llama), which run longer sequences than their
    `max_position_embeddings`."""
    import torch

    backbone = model.base_model
    embeddings = getattr(backbone, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    table = table if table is not None else getattr(backbone, "wpe", None)
    if not isinstance(table, torch.nn.Embedding):
        return None
    padding = getattr(embeddings, "padding_idx", None)  # RoBERTa counts positions from padding_idx + 1: 514 rows, 512
    return table.num_embeddings - (padding + 1 if padding is not None else 0)


def shared_start(chosen: list[int], rejected: list[int]) -> int:
    """Tokens the two sequences share at their start, leaving each at least its last token of its own
    (a reward is read there, so it must be in the ending)."""
    limit = min(len(chosen), len(rejected)) - 1
    n = 0
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    return n


# ------------------------------------------------------------------------------------- fingerprint


FINGERPRINT_COLUMNS = ("prompt", "chosen", "rejected", "margin")
"""The columns training reads, and so the ones a data fingerprint covers."""


def fingerprint(dataset) -> str:
    """sha256 of the rows' training-relevant columns, in order: the same data gives the same value."""
    digest = hashlib.sha256()
    present = [c for c in FINGERPRINT_COLUMNS if c in dataset.column_names]
    for row in dataset.select_columns(present):
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()

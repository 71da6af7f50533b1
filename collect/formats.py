"""Readers for preference data: prefloop's generic schema and the common public formats.

Every reader turns a file into `Record`s and checks each one, so a bad row fails with its file, line and
field before anything touches the database (see collect.ingest). Choices are relative to the record's A
and B: +2 A>>B, +1 A>B, 0 tie, -1 B>A, -2 B>>A.

Generic schema (JSONL, CSV, or any `datasets` dataset; one row per prompt, pair, or judgment):

| field | type | meaning |
|---|---|---|
| prompt (required) | string, or list of {role, content} | the conversation so far; a string is one user turn |
| prompt_id | string | your id for the prompt (kept as external_id) |
| tags | list of strings, or "a,b" in CSV | e.g. `domain:medicine`, `sensitive:violence` |
| response_a, response_b | string | the two responses of a pair (both or neither) |
| model_a, model_b | string | who wrote each response |
| generation_a, generation_b | object (JSON string in CSV) | sampling parameters of each response |
| pair_id | string | your id for the pair |
| gold | choice | makes the pair a gold pair with this known answer |
| choice | `A>>B`, `A>B`, `tie`, `B>A`, `B>>A`, or -2..2 | one judgment of the pair |
| rater | string | who judged (required with choice) |
| both_bad, rationale, criteria | bool, string, object | the judgment's flag, reasoning and per-criterion choices |

Rows that repeat a prompt or a pair add nothing new but their judgment, so a file can list one judgment a line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from collect.errors import UserError, first_line, warn

FORMATS = ("generic", "hh-rlhf", "summarize", "finegrained-qa", "alpaca-eval", "trl")
CHOICE_LABELS = {"A>>B": 2, "A>B": 1, "tie": 0, "B>A": -1, "B>>A": -2}
# A response larger than this is almost surely a broken export; raise instead of storing it.
MAX_TEXT_CHARS = 1_000_000
# Names and ids (models, raters, external ids, tags) live in VARCHAR(200) columns; domains in VARCHAR(100).
MAX_NAME_CHARS = 200
MAX_DOMAIN_CHARS = 100
ROLES = ("system", "user", "assistant")


@dataclass
class Judged:
    rater: str
    choice: int
    both_bad: bool = False
    rationale: str = ""
    criteria: dict[str, int] = field(default_factory=dict)
    confidence: float | None = None


@dataclass
class Record:
    """One prompt, optionally with a pair of responses and judgments of that pair."""

    where: str  # "file:line", for error messages
    prompt: list[dict[str, str]]
    prompt_id: str | None = None
    tags: list[str] = field(default_factory=list)
    response_a: str | None = None
    response_b: str | None = None
    model_a: str = ""
    model_b: str = ""
    generation_a: dict[str, Any] = field(default_factory=dict)
    generation_b: dict[str, Any] = field(default_factory=dict)
    pair_id: str | None = None
    gold_choice: int | None = None
    judgments: list[Judged] = field(default_factory=list)
    source: str = ""
    chosen_rejected: bool = False
    """A and B are a chosen and a rejected response (TRL's and HH's rows, `prefloop export`'s), which say neither who
    wrote them nor in what order they were shown: the pair is the project's pair of the same prompt and texts, in
    either order and under whatever model names it holds (collect.ingest)."""
    exported_from: tuple[int, str] | None = None
    """(pair id, source) a row of `prefloop export` names: the pair it was written from, in the project exported,
    and where that pair came from (its `pair_id` and `source` columns)."""


# ---------------------------------------------------------------------------------------------- helpers


def _fail(where: str, field_name: str, problem: str) -> UserError:
    return UserError(f"{where}: field '{field_name}': {problem}")


def _text(value: Any, where: str, field_name: str, *, allow_empty: bool = False,
          max_chars: int = MAX_TEXT_CHARS) -> str:
    if value is None:  # not there, or null: either way the row lacks it
        raise _fail(where, field_name, "is missing")
    if not isinstance(value, str):
        raise _fail(where, field_name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _fail(where, field_name, "is empty")
    if len(value) > max_chars:
        raise _fail(where, field_name, f"is {len(value):,} characters, over the {max_chars:,} limit")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL, and no real text contains one
        raise _fail(where, field_name, "contains a NUL character")
    return value


def _name(value: Any, where: str, field_name: str, *, allow_empty: bool = True) -> str:
    """A short label: a model, rater or policy name (a number is taken as its string)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None and allow_empty:
        return ""
    return _text(value, where, field_name, allow_empty=allow_empty, max_chars=MAX_NAME_CHARS)


def parse_choice(value: Any, where: str, field_name: str = "choice") -> int:
    """A choice label (`A>B`) or integer (-2..2) as an integer relative to A and B."""
    if isinstance(value, str) and value.strip() in CHOICE_LABELS:
        return CHOICE_LABELS[value.strip()]
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and -2 <= value <= 2:
        return value
    raise _fail(where, field_name, f"{value!r} is not one of {', '.join(CHOICE_LABELS)} or -2..2")


def blank(value: Any) -> bool:
    """Whether a prompt field holds no prompt: missing, null, an empty list, or only whitespace."""
    return value is None or value == [] or isinstance(value, str) and not value.strip()


def parse_conversation(value: Any, where: str, field_name: str = "prompt",
                       empty_reply: bool = False) -> list[dict[str, str]]:
    """Messages from a string (one user message; a prompt in HH's layout, its turns) or a list of {role, content}.
    `empty_reply`: a last assistant message may be empty (a response raters preferred, or preferred another to)."""
    if is_hh_prompt(value):
        return split_hh_prompt(value, where, field_name)
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, where, field_name)}]
    if not isinstance(value, list) or not value:
        raise _fail(where, field_name, "expected a string or a non-empty list of {role, content} messages")
    messages = []
    for i, message in enumerate(value):
        name = f"{field_name}[{i}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _fail(where, name, "expected an object with 'role' and 'content'" + sharegpt_hint(message))
        if message["role"] not in ROLES:
            raise _fail(where, f"{name}.role", f"{message['role']!r} is not one of {', '.join(ROLES)}")
        reply = empty_reply and i == len(value) - 1 and message["role"] == "assistant"
        messages.append({"role": message["role"],
                         "content": _text(message["content"], where, f"{name}.content", allow_empty=reply)})
    return messages


def sharegpt_hint(message: Any) -> str:
    """What to do with a message in ShareGPT's layout (LLaMA-Factory's, many Hub datasets'), for an error about it."""
    if isinstance(message, dict) and {"from", "value"} <= set(message):
        return (" (ShareGPT's {from, value}: rename 'from' to 'role', its human and gpt to user and assistant, and "
                "'value' to 'content')")
    return ""


def _tags(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise _fail(where, "tags", "expected a list of strings")
    for i, tag in enumerate(value):
        _text(tag, where, f"tags[{i}]", max_chars=MAX_NAME_CHARS)
    domains = [t.split(":", 1)[1] for t in value if t.startswith("domain:")]
    if len(domains) > 1:
        raise _fail(where, "tags", f"has {len(domains)} domain: tags; a prompt is routed by one domain")
    if domains and len(domains[0]) > MAX_DOMAIN_CHARS:
        raise _fail(where, "tags", f"domain {domains[0][:20]!r}... is over {MAX_DOMAIN_CHARS} characters")
    sensitive = ",".join(sorted({t.split(":", 1)[1] for t in value if t.startswith("sensitive:")}))
    if len(sensitive) > MAX_NAME_CHARS:
        raise _fail(where, "tags", f"the sensitive: categories together are over {MAX_NAME_CHARS} characters")
    return value


def _object(value: Any, where: str, field_name: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise _fail(where, field_name, f"is not valid JSON ({_json_reason(e, e.lineno)} of its text)") from None
    if not isinstance(value, dict):
        raise _fail(where, field_name, "expected an object")
    return value


def _bool(value: Any, where: str, field_name: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _fail(where, field_name, f"{value!r} is not a boolean")


def content_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def read_text(path: Path) -> str:
    """The whole file (gunzipped if .gz) as text; a bad byte is reported with its line.

    A UTF-8 byte-order mark (CSV files saved by spreadsheet programs start with one) is dropped.
    """
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read()
        except (EOFError, OSError, zlib.error) as e:
            raise UserError(f"{path}: not a complete gzip file ({e or type(e).__name__})") from None
    else:
        raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def json_error(path: Path, e: json.JSONDecodeError, line: int | None = None) -> UserError:
    """A JSON parse error naming the file, line and column (`line`: the file's line where `e` is from one line of
    it)."""
    line = line if line is not None else e.lineno
    return UserError(f"{path}:{line}: invalid JSON ({_json_reason(e, line)})")


def _json_reason(e: json.JSONDecodeError, line: int) -> str:
    """json's message with its place. Some of its messages end in "at" ("Unterminated string starting at"): the
    place completes them."""
    at = "" if e.msg.endswith(" at") else " at"
    return f"{e.msg}{at} line {line}, column {e.colno}"


def read_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-empty line, with clear errors for broken lines."""
    for line_no, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as e:
            raise json_error(path, e, line_no) from None


def read_json_document(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise json_error(path, e) from None


def read_table(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a JSONL, JSON, CSV or Parquet file (optionally .gz), each with where it is, for error messages:
    "prefs.jsonl:12" (a line), "prefs.json: item 3" (of a JSON list), "prefs.parquet: row 3" (from 1). A .json
    file may also hold JSON lines, as `Dataset.to_json` writes them under any name."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".json"):
        text = read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("["):  # a broken list, not JSON lines
                raise json_error(path, e) from None
            data = None
        if isinstance(data, dict) and len([line for line in text.split("\n") if line.strip()]) > 1:
            raise UserError(f"{path}: holds one JSON object written over several lines (a metadata file, say), not "
                            "rows: expected a JSON list of objects, or JSON lines (one object a line)")
        if isinstance(data, dict):
            data = None  # one object on one line: one JSON line
        if data is not None:
            if not isinstance(data, list):
                raise UserError(f"{path}: expected a JSON list of objects (or JSON lines)")
            for i, row in enumerate(data, start=1):
                if not isinstance(row, dict):
                    raise UserError(f"{path}: item {i}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}: item {i}", row
            return
    if name.endswith((".jsonl", ".json")):
        for line_no, row in read_json_lines(path):
            if not isinstance(row, dict):
                raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{line_no}", row
    elif name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        try:
            for row in reader:
                if None in row:
                    raise UserError(f"{path}:{reader.line_num}: more values than there are columns")
                yield f"{path}:{reader.line_num}", row
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: broken CSV ({e})") from None
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(gzip.decompress(path.read_bytes())) if path.name.lower().endswith(".gz")
                                  else path)
        except Exception as e:  # pyarrow raises many types for a broken file
            raise UserError(f"{path}: not a readable Parquet file ({e})") from None
        for i, row in enumerate(labels_named(table.to_pylist(), _parquet_labels(table)), start=1):
            yield f"{path}: row {i}", row
    else:
        raise UserError(f"{path}: unknown file type (expected .jsonl, .json, .csv or .parquet, optionally .gz)")


# --------------------------------------------------------------------------------------------- readers


def generic_record(row: dict[str, Any], where: str, source: str) -> Record:
    if "chosen" in row and "rejected" in row and "response_a" not in row:  # would be read as a prompt with no pair
        raise _fail(where, "chosen", "TRL's preference columns (chosen, rejected) are read with --format trl")
    if "prompt" not in row or row["prompt"] is None:
        raise _fail(where, "prompt", "is missing")
    record = Record(
        where=where,
        prompt=parse_conversation(row["prompt"], where),
        prompt_id=_optional_id(row.get("prompt_id"), where, "prompt_id"),
        tags=_tags(row.get("tags"), where),
        source=source,
    )
    has_a, has_b = row.get("response_a") not in (None, ""), row.get("response_b") not in (None, "")
    if has_a != has_b:
        raise _fail(where, "response_b" if has_a else "response_a", "a pair needs both response_a and response_b")
    if has_a:
        record.response_a = _text(row["response_a"], where, "response_a")
        record.response_b = _text(row["response_b"], where, "response_b")
        record.model_a = _name(row.get("model_a") or "", where, "model_a")
        record.model_b = _name(row.get("model_b") or "", where, "model_b")
        record.generation_a = _object(row.get("generation_a"), where, "generation_a")
        record.generation_b = _object(row.get("generation_b"), where, "generation_b")
        record.pair_id = _optional_id(row.get("pair_id"), where, "pair_id")
        if row.get("gold") not in (None, ""):
            record.gold_choice = parse_choice(row["gold"], where, "gold")
    if row.get("choice") not in (None, ""):
        if not has_a:
            raise _fail(where, "choice", "a judgment needs response_a and response_b")
        rater = row.get("rater")
        if rater in (None, ""):
            raise _fail(where, "rater", "is missing (every judgment needs its rater)")
        criteria = _object(row.get("criteria"), where, "criteria")
        record.judgments.append(
            Judged(
                rater=_name(rater, where, "rater", allow_empty=False),
                choice=parse_choice(row["choice"], where),
                both_bad=_bool(row.get("both_bad"), where, "both_bad"),
                rationale=_text(row.get("rationale") or "", where, "rationale", allow_empty=True),
                criteria={k: parse_choice(v, where, f"criteria.{k}") for k, v in criteria.items()},
            )
        )
    return record


def _optional_id(value: Any, where: str, field_name: str) -> str | None:
    """An id as text, None where the row has none. A column of integer ids with a gap in it comes out of pandas
    (and Parquet written by it) as floats, the gap NaN: a whole float is its integer, NaN no id."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value in (None, ""):
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return _name(value, where, field_name)
    raise _fail(where, field_name, "expected a string or integer id")


def is_hh_dialogue(text: Any) -> bool:
    """Whether `text` is a dialogue in Anthropic HH's layout, '\\n\\nHuman: ...\\n\\nAssistant: ...', also with the
    leading blank lines stripped, as some copies of HH have it."""
    return isinstance(text, str) and text.lstrip().startswith("Human:") and "\n\nAssistant:" in text


def is_hh_prompt(text: Any) -> bool:
    """Whether `text` is a prompt in HH's layout as Dahoas/rm-static and Dahoas/full-hh-rlhf keep it: a dialogue
    that ends with the empty 'Assistant:' turn its response completes (that ending tells it from a question that
    merely quotes a dialogue)."""
    return is_hh_dialogue(text) and text.rstrip().endswith("\n\nAssistant:")


def split_hh_dialogue(text: str, where: str, field_name: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' into messages (the leading blank lines may be missing)."""
    _text(text, where, field_name)
    messages: list[dict[str, str]] = []
    rest = "\n\n" + text.lstrip() if text.lstrip().startswith("Human:") else text
    markers = {"\n\nHuman:": "user", "\n\nAssistant:": "assistant"}
    while rest:
        starts = [(rest.find(m), m) for m in markers if rest.find(m) != -1]
        if not starts:
            if not messages:
                raise _fail(where, field_name, "has no '\\n\\nHuman:' turn")
            messages[-1]["content"] += rest  # text after the last marker belongs to that turn
            break
        pos, marker = min(starts)
        if pos > 0 and messages:
            messages[-1]["content"] += rest[:pos]
        elif pos > 0 and rest[:pos].strip():
            raise _fail(where, field_name, "text before the first '\\n\\nHuman:' turn")
        rest = rest[pos + len(marker):]
        messages.append({"role": markers[marker], "content": ""})
    for m in messages:
        m["content"] = m["content"].strip()
    return messages


def hh_sides_are_dialogues(row: dict[str, Any], where: str = "row") -> bool:
    """Whether a preference row's two sides are whole dialogues in HH's layout, to be split into turns: both are,
    with no prompt (HH's own files), or beside a prompt in HH's layout that both start with. Beside any other prompt
    a side is a response, whatever it quotes."""
    sides = [(row.get(name), name) for name in ("chosen", "rejected")]
    if not all(is_hh_dialogue(text) for text, _ in sides):
        return False
    if blank(row.get("prompt")):
        return True
    if not is_hh_prompt(row["prompt"]):
        return False
    turns = split_hh_prompt(row["prompt"], where)
    return all(split_hh_dialogue(text, where, name)[:len(turns)] == turns for text, name in sides)


def sides_hold_prompt(prompt_value: Any, prompt: list[dict[str, str]], sides: list[list[dict[str, str]]]) -> bool:
    """Whether a row's sides (as messages) are whole conversations that its prompt (`prompt_value` as given, `prompt`
    as messages) is not to be put before: they start with the prompt's turns (HuggingFaceH4/ultrafeedback_binarized
    keeps both), or they hold their own user turns beside a prompt string, which TRL's maybe_extract_prompt then
    leaves unread (argilla's capybara copies the question with a trailing space; H4's orca_dpo_pairs starts its
    sides with a system turn; some keep only the last question)."""
    if not prompt:
        return False
    return all(side[:len(prompt)] == prompt and len(side) > len(prompt) for side in sides) or (
        isinstance(prompt_value, str) and all(any(m["role"] == "user" for m in side) for side in sides))


def split_hh_prompt(text: str, where: str, field_name: str = "prompt") -> list[dict[str, str]]:
    """A prompt in HH's layout (`is_hh_prompt`) into messages, less the empty 'Assistant:' turn it ends with."""
    return split_hh_dialogue(text, where, field_name)[:-1]


def hh_record(row: dict[str, Any], where: str, source: str, rater: str) -> Record:
    for name in ("chosen", "rejected"):
        if name not in row:
            raise _fail(where, name, "is missing")
        if not blank(row.get("prompt")) and not is_hh_dialogue(row[name]):
            raise _fail(where, name, "a response beside a 'prompt' column, not a whole dialogue in HH's layout: read "
                                     "such rows (Dahoas/rm-static's, say) with --format trl")
    chosen = split_hh_dialogue(row["chosen"], where, "chosen")
    rejected = split_hh_dialogue(row["rejected"], where, "rejected")
    return _prefix_pair(chosen, rejected, where, source, rater)


def shared_prompt_turns(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> int:
    """How many turns both conversations start with that make their prompt: the longest shared run that ends
    with a user turn and leaves each side a response (0: the two answer different conversations)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] != "user":
        shared -= 1
    return shared


def _prefix_pair(
    chosen: list[dict[str, str]], rejected: list[dict[str, str]], where: str, source: str, rater: str
) -> Record:
    """Chosen and rejected conversations that share their prompt turns and end in different assistant turns.

    The prompt is the longest shared run of turns that ends with a user turn. When one side goes on for
    more than one assistant turn after it (5 of the 2,312 HH harmless test rows do), the rest of that
    side is kept as its response, written back in the `Human:` / `Assistant:` layout, rather than lost.
    """
    for side, name in ((chosen, "chosen"), (rejected, "rejected")):
        if side[-1]["role"] != "assistant":
            raise _fail(where, name, "both conversations must end with an assistant turn")
    shared = shared_prompt_turns(chosen, rejected)
    if shared == 0:
        raise _fail(where, "chosen", "has no prompt turns shared with 'rejected' before the responses")

    def rest(messages: list[dict[str, str]]) -> str:
        tail = messages[shared:]
        if len(tail) == 1:
            return tail[0]["content"]
        names = {"user": "Human", "assistant": "Assistant", "system": "System"}
        return tail[0]["content"] + "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in tail[1:])

    return Record(
        where=where,
        prompt=chosen[:shared],
        response_a=rest(chosen),
        response_b=rest(rejected),
        judgments=[Judged(rater=rater, choice=1)],
        source=source,
        chosen_rejected=True,
    )


# Workers gave a 1-9 confidence pointing at one summary: 1 = surely the first, 9 = surely the second.
_SUMMARIZE_CHOICE = {1: 2, 2: 2, 3: 1, 4: 1, 6: -1, 7: -1, 8: -2, 9: -2}


def summarize_record(row: dict[str, Any], where: str, source: str) -> Record:
    try:
        info, summaries, choice, worker = row["info"], row["summaries"], row["choice"], row["worker"]
    except KeyError as e:
        raise _fail(where, e.args[0], "is missing") from None
    if not isinstance(info, dict):
        raise _fail(where, "info", "expected an object with post, title, subreddit and id")
    if not isinstance(summaries, list) or len(summaries) != 2 or not all(isinstance(x, dict) for x in summaries):
        raise _fail(where, "summaries", "expected a list of two summaries, each an object with 'text'")
    if choice not in (0, 1) or isinstance(choice, bool):
        raise _fail(where, "choice", f"{choice!r} is not 0 or 1")
    extra = row.get("extra") or {}
    if not isinstance(extra, dict):
        raise _fail(where, "extra", "expected an object")
    confidence = extra.get("confidence")
    if confidence is not None and (isinstance(confidence, bool) or confidence not in range(1, 10)):
        raise _fail(where, "extra.confidence", f"{confidence!r} is not an integer from 1 to 9")
    strength = _SUMMARIZE_CHOICE.get(confidence, 1 if choice == 0 else -1)
    if (strength > 0) != (choice == 0):  # a confidence that contradicts the choice: trust the choice
        strength = 1 if choice == 0 else -1
    post = _text(info.get("post") or "", where, "info.post")
    subreddit = _name(info.get("subreddit"), where, "info.subreddit")
    title = _text(info.get("title") or "", where, "info.title", allow_empty=True)
    prompt = f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\n\nTL;DR:"
    return Record(
        where=where,
        prompt=[{"role": "user", "content": prompt}],
        prompt_id=_optional_id(info.get("id"), where, "info.id"),
        response_a=_text(summaries[0].get("text"), where, "summaries[0].text"),
        response_b=_text(summaries[1].get("text"), where, "summaries[1].text"),
        model_a=_name(summaries[0].get("policy"), where, "summaries[0].policy"),
        model_b=_name(summaries[1].get("policy"), where, "summaries[1].policy"),
        judgments=[Judged(rater="summarize:" + _name(worker, where, "worker", allow_empty=False),
                          choice=strength, confidence=confidence)],
        source=source,
    )


_FINEGRAINED_PAIRS = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]


def finegrained_records(item: dict[str, Any], where: str, source: str, rater: str) -> list[Record]:
    question = _text(item.get("question"), where, "question")
    passages = item.get("passages") or []
    context = "\n\n".join(
        f"{p[0]}: {' '.join(p[1:])}" if isinstance(p, list) and p else str(p) for p in passages
    )
    prompt = [{"role": "user", "content": f"{question}\n\nPassages:\n{context}" if context else question}]
    preference = item.get("preference")
    if not isinstance(preference, list) or len(preference) != 6:
        raise _fail(where, "preference", "expected six values for the pairs (1,2) (1,3) (1,4) (2,3) (2,4) (3,4)")
    records = []
    for (i, j), value in zip(_FINEGRAINED_PAIRS, preference):
        if value not in (0, 1, 2):
            raise _fail(where, "preference", f"{value!r} is not 0 (tie), 1 or 2")
        records.append(
            Record(
                where=where,
                prompt=prompt,
                response_a=_text(item.get(f"prediction {i}"), where, f"prediction {i}"),
                response_b=_text(item.get(f"prediction {j}"), where, f"prediction {j}"),
                model_a=f"prediction {i}",
                model_b=f"prediction {j}",
                judgments=[Judged(rater=rater, choice={0: 0, 1: 1, 2: -1}[value])],
                source=source,
            )
        )
    return records


def alpaca_eval_record(item: dict[str, Any], where: str, source: str) -> Record:
    for name in ("instruction", "output_1", "output_2", "generator_1", "generator_2"):
        if name not in item:
            raise _fail(where, name, "is missing")
    record = Record(
        where=where,
        prompt=[{"role": "user", "content": _text(item["instruction"], where, "instruction")}],
        response_a=_text(item["output_1"], where, "output_1", allow_empty=True) or " ",
        response_b=_text(item["output_2"], where, "output_2", allow_empty=True) or " ",
        model_a=_name(item["generator_1"], where, "generator_1", allow_empty=False),
        model_b=_name(item["generator_2"], where, "generator_2", allow_empty=False),
        source=source,
    )
    preference = item.get("preference")
    # 1 = output_1 better, 2 = output_2 better, 0 or anything between 1 and 2 = a draw; null = not judged.
    if preference is not None:
        if isinstance(preference, bool) or not isinstance(preference, (int, float)) or not (
                preference == 0 or 1 <= preference <= 2):
            raise _fail(where, "preference", f"{preference!r} is not 1 (output_1 better), 2 (output_2 better), or a "
                                             "draw: 0 or a number between 1 and 2")
        choice = 1 if preference == 1 else -1 if preference == 2 else 0
        annotator = _name(item.get("annotator"), where, "annotator") or "judge"
        record.judgments.append(Judged(rater=f"alpaca-eval:{annotator}", choice=choice))
    return record


def trl_record(row: dict[str, Any], where: str, source: str, rater: str) -> Record:
    """TRL preference rows: plain or conversational, with an explicit `prompt` or an implicit shared one."""
    for name in ("chosen", "rejected"):
        if name not in row or row[name] in (None, []):
            raise _fail(where, name, "is missing")
    chosen, rejected = row["chosen"], row["rejected"]
    prompted = not blank(row.get("prompt"))
    if hh_sides_are_dialogues(row, where):
        record = hh_record(row, where, source, rater)  # whole dialogues, as reward.data.pair_conversations reads them
    elif prompted and isinstance(chosen, list) and isinstance(rejected, list):
        # Whole conversations, read as reward.data.pair_conversations reads them (`sides_hold_prompt`); the turns
        # the sides share are the prompt, not only the last.
        prompt = parse_conversation(row["prompt"], where)
        sides = [parse_conversation(side, where, name, empty_reply=True)
                 for side, name in ((chosen, "chosen"), (rejected, "rejected"))]
        whole = sides_hold_prompt(row["prompt"], prompt, sides)
        record = _prefix_pair(*(side if whole else prompt + side for side in sides), where, source, rater)
    elif prompted:
        prompt = parse_conversation(row["prompt"], where)
        a = _trl_completion(chosen, where, "chosen")
        b = _trl_completion(rejected, where, "rejected")
        if is_hh_prompt(row["prompt"]):  # Dahoas/rm-static's responses keep the space that followed "Assistant:"
            a, b = a.strip(), b.strip()
        record = Record(where=where, prompt=prompt, response_a=a, response_b=b,
                        judgments=[Judged(rater=rater, choice=1)], source=source)
    elif isinstance(chosen, list):
        record = _prefix_pair(
            parse_conversation(chosen, where, "chosen"), parse_conversation(rejected, where, "rejected"),
            where, source, rater,
        )
    else:
        for text, name in ((chosen, "chosen"), (rejected, "rejected")):
            _text(text, where, name)
        if is_hh_dialogue(chosen) or is_hh_dialogue(rejected):  # one side a dialogue: refused, the other named
            hh_record(row, where, source, rater)
        raise _fail(where, "prompt", "plain (string) rows need an explicit 'prompt' column")
    margin = row.get("margin")
    if isinstance(margin, (int, float)) and margin > 0.75:
        record.judgments[0].choice = 2
    tie = marked_tie(row)
    if tie is not None:  # a tie, which export leaves out, not a preference for `chosen`
        record.judgments[0].choice, record.judgments[0].both_bad = tie_choice(row, tie, record.judgments[0].choice,
                                                                              where)
    record.chosen_rejected = True
    record.pair_id, record.exported_from = export_provenance(row, where)
    return record


def export_provenance(row: dict[str, Any], where: str) -> tuple[str | None, tuple[int, str] | None]:
    """A TRL row's `pair_id`, kept as its pair's external id and checked as the generic schema's is (`_optional_id`:
    a value that is not an id is refused, naming the row), and, for a row of `prefloop export` (a numeric pair_id
    beside the export's `n_judgments`), the (pair id, source) it was written from: `collect.ingest` refuses a
    project's own export."""
    text = _optional_id(row.get("pair_id"), where, "pair_id")
    if text is None:
        return None, None
    source = row.get("source")
    exported = (int(text), source if isinstance(source, str) else "") if (
        "n_judgments" in row and text.isascii() and text.isdigit()) else None
    return text, exported


TIE_LABEL = re.compile(r"^(tied?|both[ _-]?bad)( *\(.*\))?$")
"""A label that says the raters called it a tie or both bad: "tie", "Tied", "tie (bothbad)"
(lmsys/chatbot_arena_conversations), "both_bad" (`prefloop export --include-ties`'s side file)."""


def is_tie_label(value: Any) -> bool:
    return isinstance(value, str) and TIE_LABEL.match(value.strip().lower()) is not None


def names_a_tie(column: str) -> bool:
    """A 0/1 column for ties: winner_tie (lmsys/arena-human-preference-55k), is_tie, tie."""
    return re.search(r"(^|_)tied?($|_)", column.lower()) is not None


def rating_partner(column: str) -> str | None:
    """The column that rates the rejected side where `column` rates the chosen one: score_chosen and score_rejected
    (HuggingFaceH4/ultrafeedback_binarized), chosen_rating, rating_chosen, chosen-rating (argilla's), chosen_rank.
    Only names that say rating, score or rank: chosen_len beside rejected_len measures, not judges."""
    rates = re.search(r"rating|score|rank", column.lower()) and "chosen" in column
    return column.replace("chosen", "rejected") if rates else None


def number(value: Any) -> float | None:
    """A rating as a number, also written as text ("8": CSV holds nothing else); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def marked_tie(row: dict[str, Any]) -> tuple[str, bool] | None:
    """How the columns beside a TRL row's pair mark it a tie ("winner = 'tie'", "score_chosen equal to
    score_rejected", "winner_tie = 1"), and whether they say both sides are bad; None where they do not. Import makes
    such a row a tie; training warns of it (reward.data.warn_ties), so the two agree."""
    for column, value in row.items():
        if column in ("prompt", "chosen", "rejected", "messages"):
            continue
        partner = rating_partner(column)
        if partner in row and number(value) is not None and number(value) == number(row[partner]):
            return f"{column} equal to {partner}", False
        if is_tie_label(value):
            return f"{column} = {value!r}", "bothbad" in re.sub(r"[ _-]", "", value.lower())
        said = str(value).strip().lower() in ("true", "yes")  # a CSV's True
        if names_a_tie(column) and (value is True or number(value) == 1 or said):
            return f"{column} = 1", False
    return None


def tie_choice(row: dict[str, Any], tie: tuple[str, bool], choice: int, where: str) -> tuple[int, bool]:
    """(choice, both bad) of a row `marked_tie` marks (`tie`), whose pair would otherwise be read as `choice` for
    `chosen`: a tie, except where both sides are called bad and `chosen_better` (`prefloop export --include-ties`'s
    side file) says the raters still found `chosen` better: that lean is kept, with the strength `margin` gave."""
    better = _bool(row.get("chosen_better"), where, "chosen_better")
    if better and not tie[1]:
        raise _fail(where, "chosen_better", f"is true beside {tie[0]}, a tie that does not call both sides bad: a tie "
                                            "prefers neither side")
    return (choice if better else 0), tie[1]


def rated_worse(row: dict[str, Any]) -> str | None:
    """How the ratings beside a TRL row's pair put `rejected` above `chosen` ("score_chosen below score_rejected";
    for a rank, lower is better: "chosen_rank above rejected_rank"), or None: the sides swapped, likely."""
    for column, value in row.items():
        partner = rating_partner(column)
        if partner not in row or number(value) is None or number(row[partner]) is None:
            continue
        rank = "rank" in column.lower()
        if number(value) > number(row[partner]) if rank else number(value) < number(row[partner]):
            return f"{column} {'above' if rank else 'below'} {partner}"
    return None


def _trl_completion(value: Any, where: str, field_name: str) -> str:
    if isinstance(value, str):  # an empty response is a response (HH harmless has four)
        return _text(value, where, field_name, allow_empty=True)
    messages = parse_conversation(value, where, field_name, empty_reply=True)
    if messages[-1]["role"] != "assistant":
        raise _fail(where, field_name, "the last message must be the assistant's")
    return messages[-1]["content"]


# ----------------------------------------------------------------------------------------------- entry


def detect_format(path: Path) -> str:
    """The format of a file from its first row, else by its name, as the datasets in ../shared/data are named: rows
    with `chosen` and `rejected` are TRL's (Anthropic HH's among them, whose sides are whole dialogues; an "hh"
    JSON Lines file of such rows is read as HH-RLHF), whatever the file is called (`prefloop export
    summarize_prefs.jsonl` of a project called summarize writes TRL's rows)."""
    name = path.name.lower()
    row = _first_row(path)
    hh_rows = not isinstance(row, dict) or "prompt" not in row and isinstance(row.get("chosen"), str)
    if "hh" in name and "jsonl" in name and hh_rows:  # unreadable too: the HH parser names the line that is wrong
        return "hh-rlhf"
    if isinstance(row, dict) and "chosen" in row and "rejected" in row and "response_a" not in row:
        return "trl"
    if "summarize" in name:
        return "summarize"
    if "finegrained" in name:
        return "finegrained-qa"
    if "annotations.json" in name:
        return "alpaca-eval"
    return "generic"


def _first_row(path: Path) -> Any:
    """The first row of a file or save_to_disk folder, read without reading the rest (HH files run to hundreds of
    megabytes), or None where there is none or it cannot be read: the reader then names why, and warns of a
    DatasetDict's unread splits."""
    name = path.name.lower().removesuffix(".gz")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.is_dir():
                return next(iter(dataset_dir_rows(path)), (None, None))[1]
            if name.endswith(".parquet") and not path.name.lower().endswith(".gz"):
                import pyarrow.parquet as pq

                batch = next(pq.ParquetFile(path).iter_batches(batch_size=1), None)
                return batch.to_pylist()[0] if batch is not None and batch.num_rows else None
            if name.endswith((".jsonl", ".json", ".csv")):
                with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rt", encoding="utf-8-sig",
                                                                               newline="") as f:
                    if name.endswith(".csv"):
                        return next(csv.DictReader(f), None)
                    line = next((line for line in f if line.strip()), "")
                    if not line.lstrip().startswith("["):  # JSON lines; a JSON list is read whole below
                        return json.loads(line)
            return next(iter(read_table(path)), (None, None))[1]
    except Exception:  # any reading failure is reported by the reader, with the file's line
        return None


def read_records(path: str | Path, format: str = "auto", rater: str | None = None) -> list[Record]:
    """Parse and check a whole file. Raises UserError naming file, line and field at the first bad row.

    `rater` names who made the labels of formats that carry no rater id (HH-RLHF, FineGrained, TRL).
    """
    path = Path(path)
    _check_rater_option(rater)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    format = detect_format(path) if format == "auto" else format
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    source = f"{format}:{path.name}"[:MAX_NAME_CHARS]
    if path.is_dir():  # a `datasets.save_to_disk` folder
        records = records_from_rows(dataset_dir_rows(path), format, source, rater)
    elif format == "finegrained-qa":
        data = read_json_document(path)
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list")
        records = records_from_rows(_json_items(path, data), format, source, rater)
    else:
        records = records_from_rows(read_table(path), format, source, rater)
    if not records:
        raise UserError(f"{path}: no rows")
    return records


ROW_SIGNATURES = {
    "summarize": ("OpenAI summarize-from-feedback's rows", ("info", "summaries", "choice", "worker"), 2),
    "finegrained-qa": ("FineGrainedRLHF QA-feedback items", ("question", "passages", "prediction 1", "prediction 2",
                                                             "preference"), 4),
    "alpaca-eval": ("AlpacaEval annotations", ("instruction", "output_1", "output_2", "generator_1", "generator_2",
                                               "preference"), 3),
}
"""Formats whose rows are told by their fields, where a file's name says nothing: (what they are, their fields, how
many of the first fields a row must have to be one). The auto format goes by name, so a file called otherwise is
read as generic; its error then says which format reads such rows."""


def format_hint(row: dict[str, Any], fmt: str) -> str:
    """"; ... are read with --format X" where a row read as `fmt` has another format's fields, else ""."""
    for other, (what, fields, needed) in ROW_SIGNATURES.items():
        if other != fmt and set(fields[:needed]) <= set(row):
            return f"; {what} ({', '.join(fields)}) are read with --format {other}"
    return ""


def _json_items(path: Path, data: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise UserError(f"{path}: item {i}: expected a JSON object")
        yield f"{path}: item {i}", item


def records_from_rows(
    rows: Iterable[tuple[str, dict[str, Any]]], fmt: str, source: str, rater: str | None = None
) -> list[Record]:
    """Records from (where, row) pairs: the same check for files and for `datasets` datasets. A row refused that has
    the fields of another format says which `--format` reads it."""
    out: list[Record] = []
    for where, row in rows:
        try:
            _read_row(out, where, row, fmt, source, rater)
        except UserError as e:
            hint = format_hint(row, fmt)
            if not hint:
                raise
            raise UserError(f"{e}{hint}") from None
    return out


def _read_row(out: list[Record], where: str, row: dict[str, Any], fmt: str, source: str, rater: str | None) -> None:
    if fmt == "generic":
        out.append(generic_record(row, where, source))
    elif fmt == "hh-rlhf":
        out.append(hh_record(row, where, source, rater or "hh-rlhf:crowd"))
    elif fmt == "summarize":
        out.append(summarize_record(row, where, source))
    elif fmt == "alpaca-eval":
        out.append(alpaca_eval_record(row, where, source))
    elif fmt == "trl":
        out.append(trl_record(row, where, source, rater or "trl:label"))
    elif fmt == "finegrained-qa":
        out.extend(finegrained_records(row, where, source, rater or "finegrained-qa:crowd"))


def records_from_dataset(dataset: Any, format: str = "generic", name: str = "dataset",
                         rater: str | None = None) -> list[Record]:
    """Records from an in-memory `datasets.Dataset` (or anything iterable of dicts)."""
    _check_rater_option(rater)
    rows = ((f"{name}: row {i}", row) for i, row in enumerate(labels_named(one_split(dataset, name)), start=1))
    records = records_from_rows(rows, format, f"{format}:{name}"[:MAX_NAME_CHARS], rater)
    if not records:
        raise UserError(f"{name}: no rows")
    return records


def _check_rater_option(rater: str | None) -> None:
    """The rater named by the caller (`--rater`) obeys the same limits as one named in a file."""
    if rater is not None:
        _name(rater, "--rater", "rater", allow_empty=False)


def dataset_dir_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a `save_to_disk` folder (`load_dataset_dir`), each with where it is: "prefs: row 3"."""
    for i, row in enumerate(labels_named(load_dataset_dir(path)), start=1):
        yield f"{path}: row {i}", row


def labels_named(rows: Any, labels: dict[str, list[str]] | None = None) -> Iterator[dict[str, Any]]:
    """Rows with their ClassLabel columns as the labels' names ("tie", not 2), as a file of text holds them: the
    labels of a Dataset's features, or `labels` (column: names) given."""
    if labels is None:
        labels = {c: f.names for c, f in (getattr(rows, "features", None) or {}).items() if getattr(f, "names", None)}
    for row in rows:
        yield {key: labels[key][value] if key in labels and isinstance(value, int) and 0 <= value < len(labels[key])
               else value for key, value in dict(row).items()}


def _parquet_labels(table: Any) -> dict[str, list[str]]:
    """The ClassLabel names of a Parquet table that `datasets` wrote (its features, in the schema's metadata)."""
    try:
        features = json.loads((table.schema.metadata or {})[b"huggingface"])["info"]["features"]
        return {c: f["names"] for c, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"}
    except (KeyError, TypeError, ValueError):
        return {}


def load_dataset_dir(path: Path, split: str | None = "train") -> Any:
    """The `datasets.Dataset` in a `save_to_disk` folder; of a DatasetDict, the one split `one_split` picks."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a dataset saved with save_to_disk ({first_line(e)})") from None
    return one_split(dataset, str(path), split)


def one_split(dataset: Any, what: str, split: str | None = "train") -> Any:
    """A Dataset as it is; a DatasetDict's only split, or its `split`, with a warning naming the splits left
    unread; a UserError where the DatasetDict has several and no `split` (None: the caller cannot choose)."""
    import datasets

    if not isinstance(dataset, datasets.DatasetDict):
        return dataset
    names = list(dataset)
    if len(names) == 1:
        return dataset[names[0]]
    if split is None or split not in dataset:
        wanted = f"no {split!r} split" if split else "which split?"
        raise UserError(f"{what}: a DatasetDict with splits {', '.join(map(repr, names))}, {wanted}: pass one "
                        f"split (its folder FOLDER/SPLIT, or dataset['SPLIT'] in Python)")
    unread = ", ".join(repr(n) for n in names if n != split)
    warn(f"{what}: reading the DatasetDict's {split!r} split; {unread} not read")
    return dataset[split]

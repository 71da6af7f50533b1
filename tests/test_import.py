"""Import: every public format round-trips with the counts of the real files; bad input changes nothing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from collect import db
from collect.errors import UserError
from collect.export import export_project
from collect.ingest import import_dataset, import_file
from collect.models import Judgment, Pair, Prompt, Rater, Response
from collect.projects import create_project, get_project


def counts(url: str) -> dict[str, int]:
    with db.session_scope(url) as s:
        return {m.__name__: s.scalar(select(func.count()).select_from(m)) for m in (Prompt, Response, Pair, Judgment)}


def import_into(url: str, path: Path, fmt: str = "auto", project: str = "p", **kwargs):
    with db.session_scope(url) as s:
        try:
            p = get_project(s, project)
        except UserError:
            p = create_project(s, project)
    with db.session_scope(url) as s:
        return import_file(s, get_project(s, project), path, fmt, **kwargs)


def test_hh_rlhf_round_trip(db_url, data_dir, tmp_path):
    path = data_dir / "hh_harmless_base_test.jsonl.gz"
    result = import_into(db_url, path)
    assert (result.pairs, result.judgments) == (2312, 2312)
    again = import_into(db_url, path)
    assert (again.prompts, again.responses, again.pairs, again.judgments) == (0, 0, 0, 0)
    with db.session_scope(db_url) as s:
        out = export_project(s, get_project(s, "p"), tmp_path / "hh.jsonl")
    assert out.rows == 2312
    first_raw = json.loads(gzip.open(path, "rt").readline())
    exported = [json.loads(line) for line in open(tmp_path / "hh.jsonl")]
    match = [r for r in exported if r["chosen"][0]["content"] in first_raw["chosen"]
             and first_raw["chosen"].endswith(r["chosen"][0]["content"])]
    assert match, "the first HH pair is in the export with its chosen response"
    row = match[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][-1]["role"] == "user"
    assert first_raw["rejected"].endswith(row["rejected"][0]["content"])


def test_summarize_keeps_workers_and_strength(db_url, data_dir):
    result = import_into(db_url, data_dir / "summarize_feedback_batch13.jsonl")
    assert (result.pairs, result.judgments, result.raters) == (905, 1097, 27)
    with db.session_scope(db_url) as s:
        names = set(s.scalars(select(Rater.name)))
        strengths = set(s.scalars(select(Judgment.choice)))
    assert all(n.startswith("summarize:") for n in names)
    assert strengths == {-2, -1, 1, 2}


def test_finegrained_qa_has_six_pairs_per_prompt_with_ties(db_url, data_dir):
    result = import_into(db_url, data_dir / "finegrained_qa_dev_feedback.json")
    assert (result.prompts, result.pairs, result.judgments) == (500, 3000, 3000)
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count()).where(Judgment.choice == 0)) == 384


def test_alpaca_eval_keeps_model_names(db_url, data_dir):
    for path in sorted((data_dir / "alpaca_eval").glob("*.annotations.json")):
        import_into(db_url, path)
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count(Pair.id))) == 4 * 805
        assert s.scalar(select(func.count(Prompt.id))) == 805  # the same 805 instructions
        models = set(s.scalars(select(Response.model)))
    assert models == {"text_davinci_003", "alpaca-7b", "claude", "gpt-3.5-turbo-0301", "vicuna-13b"}


def test_trl_formats(sqlite_url, tmp_path):
    conversational_implicit = {
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}
    explicit_plain = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    explicit_conversational = {"prompt": [{"role": "user", "content": "capital of France?"}],
                               "chosen": [{"role": "assistant", "content": "Paris"}],
                               "rejected": [{"role": "assistant", "content": "Rome"}]}
    path = tmp_path / "trl.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (conversational_implicit, explicit_plain,
                                                       explicit_conversational)))
    result = import_into(sqlite_url, path, "trl")
    assert (result.pairs, result.judgments) == (3, 3)
    with db.session_scope(sqlite_url) as s:
        out = export_project(s, get_project(s, "p"), tmp_path / "out.jsonl")
    rows = {r["prompt"][-1]["content"]: r for r in map(json.loads, open(out.path))}
    assert rows["hi"]["chosen"][0]["content"] == "hello!"
    assert rows["2+2?"]["rejected"][0]["content"] == "5"
    assert rows["capital of France?"]["chosen"][0]["content"] == "Paris"


def test_generic_csv_with_judgments_and_dataset(sqlite_url, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,response_a,response_b,model_a,model_b,rater,choice,tags\n"
        "What is 2+2?,4,5,m1,m2,alice,A>>B,\"domain:math,easy\"\n"
        "What is 2+2?,4,5,m1,m2,bob,A>B,\"domain:math,easy\"\n"
        "What is 3+3?,7,6,m1,m2,alice,B>A,\n")
    result = import_into(sqlite_url, path)
    assert (result.prompts, result.pairs, result.judgments, result.raters) == (2, 2, 3, 2)
    with db.session_scope(sqlite_url) as s:
        p = get_project(s, "p")
        more = import_dataset(s, p, [{"prompt": "What is 3+3?", "response_a": "7", "response_b": "6",
                                      "model_a": "m1", "model_b": "m2", "rater": "carol", "choice": -2}])
        assert (more.pairs, more.judgments) == (0, 1)
        assert s.scalar(select(Prompt.domain).where(Prompt.conversation.is_not(None)).limit(1)) == "math"
        out = export_project(s, p, tmp_path / "out.parquet")
    import datasets

    rows = {r["prompt"][0]["content"]: r for r in datasets.load_dataset("parquet", data_files=out.path)["train"]}
    assert rows["What is 2+2?"]["margin"] == pytest.approx(0.75)  # (1.0 + 0.5) / 2
    assert rows["What is 3+3?"]["chosen"][0]["content"] == "6"
    assert rows["What is 3+3?"]["n_judgments"] == 2


BAD_INPUTS = {
    "truncated.jsonl": (b'{"prompt": "a", "response_a": "x", "response_b": "y"}\n{"prompt": "b", "respo',
                        r"truncated.jsonl:2: invalid JSON"),
    "missing.jsonl": (b'{"prompt": "a"}\n{"response_a": "x", "response_b": "y"}\n',
                      r"missing.jsonl:2: field 'prompt': is missing"),
    "wrongtype.jsonl": (b'{"prompt": "a", "response_a": 5, "response_b": "y"}\n',
                        r"wrongtype.jsonl:1: field 'response_a': expected a string, got int"),
    "badchoice.jsonl": (b'{"prompt": "a", "response_a": "x", "response_b": "y", "rater": "r", "choice": "A>>>B"}\n',
                        r"badchoice.jsonl:1: field 'choice'"),
    "norater.jsonl": (b'{"prompt": "a", "response_a": "x", "response_b": "y", "choice": "tie"}\n',
                      r"norater.jsonl:1: field 'rater'"),
    "empty.jsonl": (b"", r"empty.jsonl: the file is empty"),
    "latin1.jsonl": ('{"prompt": "ok", "response_a": "x", "response_b": "y"}\n{"prompt": "caf\xe9"}\n'.encode("latin-1"),
                     r"latin1.jsonl:2: not valid UTF-8"),
    "huge.jsonl": (b'{"prompt": "a", "response_a": "x", "response_b": "y"}\n'
                   + json.dumps({"prompt": "b", "response_a": "x" * 5_000_000, "response_b": "y"}).encode(),
                   r"huge.jsonl:2: field 'response_a': is 5,000,000 characters"),
    "broken.csv": (b"prompt,response_a,response_b\nfine,x,y\nbad,\xff\xfe,y\n", r"broken.csv.*not valid UTF-8"),
    "badrole.jsonl": (b'{"prompt": [{"role": "wizard", "content": "hi"}]}\n', r"badrole.jsonl:1: field 'prompt\[0\].role'"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_names_the_place_and_changes_nothing(db_url, tmp_path, name):
    content, message = BAD_INPUTS[name]
    import_into(db_url, _write(tmp_path / "good.jsonl", b'{"prompt": "kept", "response_a": "1", "response_b": "2"}\n'))
    before = counts(db_url)
    path = _write(tmp_path / name, content)
    with pytest.raises(UserError, match=message):
        import_into(db_url, path)
    assert counts(db_url) == before


def test_a_failure_mid_write_rolls_everything_back(sqlite_url, monkeypatch):
    """A crash after every row was written (here: in the audit at the very end) leaves nothing behind."""
    import collect.ingest as ingest

    rows = [{"prompt": f"q{i}", "response_a": "a", "response_b": "b", "rater": "r", "choice": 1} for i in range(50)]

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ingest, "audit", disk_full)
    with db.session_scope(sqlite_url) as s:
        create_project(s, "p")
    with pytest.raises(OSError), db.session_scope(sqlite_url) as s:
        import_dataset(s, get_project(s, "p"), rows)
    assert counts(sqlite_url) == {"Prompt": 0, "Response": 0, "Pair": 0, "Judgment": 0}


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
row_values = st.one_of(st.none(), text, st.integers(-5, 5), st.booleans(), st.lists(text, max_size=2),
                       st.dictionaries(text, text, max_size=2))
rows = st.lists(st.dictionaries(st.sampled_from(["prompt", "response_a", "response_b", "rater", "choice", "tags",
                                                 "model_a", "gold", "criteria", "both_bad", "pair_id"]),
                                row_values, max_size=8), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows)
def test_fuzzed_generic_rows_import_whole_or_fail_cleanly(sqlite_url, rows):
    """Any row soup either imports completely or raises UserError and leaves the database as it was."""
    with db.session_scope(sqlite_url) as s:
        if not s.scalar(select(func.count()).select_from(Prompt).limit(1)) and not _has_project(s):
            create_project(s, "p")
    before = counts(sqlite_url)
    try:
        with db.session_scope(sqlite_url) as s:
            result = import_dataset(s, get_project(s, "p"), rows, name="fuzz")
    except UserError as e:
        assert "fuzz: row" in str(e) or "no rows" in str(e)
        assert counts(sqlite_url) == before
    else:
        after = counts(sqlite_url)
        assert after["Pair"] - before["Pair"] == result.pairs
        assert after["Judgment"] - before["Judgment"] == result.judgments


def _has_project(session) -> bool:
    try:
        get_project(session, "p")
        return True
    except UserError:
        return False

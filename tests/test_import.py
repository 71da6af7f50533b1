"""Import: every public format round-trips with the counts of the real files; bad input changes nothing."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy import text as sql

from collect import db
from collect.errors import UserError
from collect.export import export_project
from collect.formats import read_records, records_from_dataset
from collect.ingest import import_dataset, import_file
from collect.models import Judgment, Pair, Prompt, Rater, Response
from collect.projects import create_project, get_project


def counts(url: str) -> dict[str, int]:
    with db.session_scope(url) as s:
        return {m.__name__: s.scalar(select(func.count()).select_from(m)) for m in (Prompt, Response, Pair, Judgment)}


def import_into(url: str, path: Path, fmt: str = "auto", project: str = "p", **kwargs):
    with db.session_scope(url) as s:
        try:
            get_project(s, project)
        except UserError:
            create_project(s, project)
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


def test_hh_dialogues_without_their_leading_blank_lines_and_hh_prompts_import_as_turns(tmp_path):
    """Copies of HH that strip each side's leading "\\n\\n", and Dahoas/rm-static's layout (the dialogue in `prompt`,
    ending "Assistant:", the response alone in chosen and rejected), are dialogues, not one message holding the
    "Human:" and "Assistant:" markers."""
    stripped = {"chosen": "Human: hi\n\nAssistant: Why?\n\nHuman: just because\n\nAssistant: hello",
                "rejected": "Human: hi\n\nAssistant: Why?\n\nHuman: just because\n\nAssistant: go away"}
    dahoas = {"prompt": "\n\nHuman: hi\n\nAssistant: Why?\n\nHuman: just because\n\nAssistant:",
              "chosen": " hello", "rejected": " go away"}
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Why?"},
             {"role": "user", "content": "just because"}]
    for fmt, name, row in (("hh-rlhf", "hh.jsonl", stripped), ("trl", "trl.jsonl", stripped),
                           ("trl", "trl.jsonl", dahoas)):
        record = read_records(_write(tmp_path / name, json.dumps(row).encode()), fmt, rater="crowd")[0]
        assert record.prompt == turns, (fmt, row)
        assert (record.response_a.strip(), record.response_b.strip()) == ("hello", "go away")


def test_public_preference_shapes_import_whole_and_ties_stay_ties(sqlite_url, tmp_path):
    """Found by a review with public datasets' shapes: TRL rows in a file not named for its format were read as
    generic rows and their pairs dropped unsaid; a prompt beside whole conversations kept only the last turn; ties
    marked beside a pair were imported as preferences."""
    question = {"role": "user", "content": "What is 2+2?"}
    turns = [question, {"role": "assistant", "content": "4."}, {"role": "user", "content": "And times 3?"}]
    capybara = {"prompt": "And times 3?", "chosen": turns + [{"role": "assistant", "content": "12."}],
                "rejected": turns + [{"role": "assistant", "content": "6."}], "rating_chosen": 5, "rating_rejected": 3}
    arena = {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Blue.", "winner": "tie (bothbad)"}
    scored = {"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Pear.", "score_chosen": 8.0,
              "score_rejected": 8.0}
    path = _write(tmp_path / "prefs.jsonl", "\n".join(json.dumps(r) for r in (capybara, arena, scored)).encode())
    records = read_records(path, "auto", rater="crowd")
    assert records[0].prompt == turns and (records[0].response_a, records[0].response_b) == ("12.", "6.")
    assert [(r.judgments[0].choice, r.judgments[0].both_bad) for r in records] == [(1, False), (0, True), (0, False)]
    result = import_into(sqlite_url, path, rater="crowd")
    assert (result.pairs, result.judgments) == (3, 3)
    with db.session_scope(sqlite_url) as s:
        out = export_project(s, get_project(s, "p"), tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in open(out.path)]
    assert [r["prompt"][-1]["content"] for r in rows] == ["And times 3?"]  # the two ties are left out
    # Named as the generic format, such rows are refused with what to do, not read as prompts with no pair.
    with pytest.raises(UserError, match=r"prefs.jsonl:1: field 'chosen': TRL's preference columns \(chosen, "
                                        r"rejected\) are read with --format trl$"):
        read_records(path, "generic")
    # Only labels that say tie (or both bad, in any case), and ratings of the two sides; a question that starts
    # "Tie", lengths that match, or a CSV's numbers as text are read for what they are.
    plain = {"prompt": "Tie a knot for a boat?", "chosen": "A bowline.", "rejected": "A granny.", "chosen_len": 10,
             "rejected_len": 10, "subset": "tied-up"}
    csv_path = _write(tmp_path / "ties.csv", b"prompt,chosen,rejected,score_chosen,score_rejected,kind\n"
                      b"q1,a,b,8,8,\nq2,a,b,9,3,Tie (Both Bad)\nq3,a,b,9,3,\n")
    marks = [(r.judgments[0].choice, r.judgments[0].both_bad) for r in read_records(csv_path, "auto", rater="crowd")]
    assert marks == [(0, False), (0, True), (1, False)]
    path = _write(tmp_path / "summarize_prefs.jsonl", json.dumps(plain).encode())  # TRL rows under another name
    assert [r.judgments[0].choice for r in read_records(path, "auto", rater="crowd")] == [1]
    # A CSV's True for a tie column; a ClassLabel's tie, in a Dataset; a gzipped Parquet file.
    flags = _write(tmp_path / "flags.csv", b"prompt,chosen,rejected,is_tie\nq1,a,b,True\nq2,a,b,False\n")
    assert [r.judgments[0].choice for r in read_records(flags, "auto", rater="crowd")] == [0, 1]
    import datasets

    features = datasets.Features({**{c: datasets.Value("string") for c in ("prompt", "chosen", "rejected")},
                                  "winner": datasets.ClassLabel(names=["model_a", "model_b", "tie"])})
    labelled = datasets.Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b", "winner": w}
                                           for w in (2, 0)], features=features)
    assert [r.judgments[0].choice for r in records_from_dataset(labelled, "trl", rater="crowd")] == [0, 1]
    packed = tmp_path / "prefs.parquet.gz"
    labelled.to_parquet(str(tmp_path / "prefs.parquet"))
    packed.write_bytes(gzip.compress((tmp_path / "prefs.parquet").read_bytes()))
    assert [r.judgments[0].choice for r in read_records(packed, "trl", rater="crowd")] == [0, 1]  # labels kept
    # Empty responses (HH harmless has four, which its export keeps) and a blank prompt beside HH's dialogues.
    empty = [{"prompt": "q", "chosen": "", "rejected": "b"},
             {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": ""}],
              "rejected": [{"role": "assistant", "content": "b"}]},
             {"prompt": " ", "chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}]
    path = _write(tmp_path / "empty.jsonl", "\n".join(map(json.dumps, empty)).encode())
    assert [(r.prompt[0]["content"], r.response_a) for r in read_records(path, "trl", rater="crowd")] == [
        ("q", ""), ("q", ""), ("hi", "a")]
    dahoas = _write(tmp_path / "hh_dahoas.jsonl", json.dumps(
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello", "rejected": " go away"}).encode())
    with pytest.raises(UserError, match=r"field 'chosen': a response beside a 'prompt' column, not a whole dialogue "
                                        r"in HH's layout: read such rows \(Dahoas/rm-static's, say\) with --format trl"):
        read_records(dahoas, "hh-rlhf", rater="crowd")


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


def test_a_saved_datasetdict_imports_its_train_split_and_names_the_others(sqlite_url, tmp_path):
    """`prefloop import FOLDER` of a `save_to_disk` DatasetDict: its 'train' split, with the rest named (the
    first split used to be read in silence, whatever its name); one split's folder imports on its own."""
    import datasets

    def pairs(prompts):
        return datasets.Dataset.from_list([{"prompt": q, "response_a": "1", "response_b": "2"} for q in prompts])

    datasets.DatasetDict({"test": pairs(["t1"]), "train": pairs(["a", "b"])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.warns(UserWarning, match="reading the DatasetDict's 'train' split; 'test' not read"):
        assert (import_into(sqlite_url, tmp_path / "dd")).pairs == 2
    assert import_into(sqlite_url, tmp_path / "dd" / "test").pairs == 1
    datasets.DatasetDict({"test": pairs(["t1"]), "dev": pairs(["d"])}).save_to_disk(str(tmp_path / "no-train"))
    with pytest.raises(UserError, match="with splits 'test', 'dev', no 'train' split: pass one split"):
        import_into(sqlite_url, tmp_path / "no-train")


def _summarize(**changes) -> bytes:
    """One summarize-from-feedback row (the shape of the shared file), with some fields replaced."""
    row = {"info": {"id": "t3_1", "post": "My cat...", "title": "Cat", "subreddit": "cats"},
           "summaries": [{"text": "a cat", "policy": "sup1"}, {"text": "a dog", "policy": "sup2"}],
           "choice": 0, "worker": "w1", "extra": {"confidence": 3}}
    return json.dumps({**row, **changes}).encode()


def _alpaca(**changes) -> bytes:
    """An AlpacaEval annotations file whose second item has some fields replaced."""
    item = {"instruction": "Say hi", "output_1": "hi", "output_2": "hello", "generator_1": "gpt4",
            "generator_2": "claude", "annotator": "judge", "preference": 1.0}
    return json.dumps([item, {**item, **changes}]).encode()


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
    # A .json file holds a list (rows named by item) or JSON lines, as Dataset.to_json writes it (named by line).
    "items.json.gz": (gzip.compress(b'[{"prompt": "a"}, {"prompt": "b", "response_a": 5, "response_b": "y"}]'),
                      r"items.json.gz: item 2: field 'response_a'"),
    "lines.json": (b'{"prompt": "a"}\n{"prompt": "b", "response_a": 5, "response_b": "y"}\n',
                   r"lines.json:2: field 'response_a'"),
    "brokenlist.json": (b'[\n {"prompt": "a"},\n {"prompt": "b",}\n]\n', r"brokenlist.json:3: invalid JSON"),
    # An export's metadata file named by mistake: valid JSON, not rows (it said "invalid JSON" at line 1).
    "prefs.parquet.meta.json": (b'{\n  "project": "p",\n  "rows": 3\n}\n',
                                r"prefs.parquet.meta.json: holds one JSON object written over several lines"),
    "latin1.jsonl": ('{"prompt": "ok", "response_a": "x", "response_b": "y"}\n{"prompt": "caf\xe9"}\n'.encode("latin-1"),
                     r"latin1.jsonl:2: not valid UTF-8"),
    "huge.jsonl": (b'{"prompt": "a", "response_a": "x", "response_b": "y"}\n'
                   + json.dumps({"prompt": "b", "response_a": "x" * 5_000_000, "response_b": "y"}).encode(),
                   r"huge.jsonl:2: field 'response_a': is 5,000,000 characters"),
    "broken.csv": (b"prompt,response_a,response_b\nfine,x,y\nbad,\xff\xfe,y\n", r"broken.csv.*not valid UTF-8"),
    "badrole.jsonl": (b'{"prompt": [{"role": "wizard", "content": "hi"}]}\n', r"badrole.jsonl:1: field 'prompt\[0\].role'"),
    "truncated.jsonl.gz": (gzip.compress(b'{"prompt": "a", "response_a": "x", "response_b": "y"}\n' * 50)[:-20],
                           r"truncated.jsonl.gz: not a complete gzip file"),
    "nul.jsonl": (b'{"prompt": "a", "response_a": "x\\u0000y", "response_b": "y"}\n',
                  r"nul.jsonl:1: field 'response_a': contains a NUL character"),
    "longmodel.jsonl": (json.dumps({"prompt": "a", "response_a": "x", "response_b": "y", "model_a": "m" * 201})
                        .encode(), r"longmodel.jsonl:1: field 'model_a': is 201 characters, over the 200 limit"),
    "raterlist.jsonl": (b'{"prompt": "a", "response_a": "x", "response_b": "y", "rater": ["ann"], "choice": 1}\n',
                        r"raterlist.jsonl:1: field 'rater': expected a string, got list"),
    "twodomains.jsonl": (b'{"prompt": "a", "tags": ["domain:law", "domain:tax"]}\n',
                         r"twodomains.jsonl:1: field 'tags': has 2 domain: tags"),
    "summarize_info.jsonl": (
        _summarize(info="a post") + b"\n", r"summarize_info.jsonl:1: field 'info': expected an object"),
    "summarize_texts.jsonl": (
        _summarize(summaries=["short", "long"]) + b"\n", r"summarize_texts.jsonl:1: field 'summaries'"),
    "summarize_confidence.jsonl": (
        _summarize() + b"\n" + _summarize(extra={"confidence": "sure"}) + b"\n",
        r"summarize_confidence.jsonl:2: field 'extra.confidence': 'sure' is not an integer from 1 to 9"),
    "summarize_policy.jsonl": (
        _summarize(summaries=[{"text": "x", "policy": {"name": "sup"}}, {"text": "y"}]) + b"\n",
        r"summarize_policy.jsonl:1: field 'summaries\[0\].policy': expected a string, got dict"),
    "model.annotations.json": (_alpaca(generator_1=["gpt"]),
                               r"model.annotations.json: item 2: field 'generator_1': expected a string, got list"),
    "pref.annotations.json": (_alpaca(preference=True),
                              r"pref.annotations.json: item 2: field 'preference': True is not 1 \(output_1 better\), "
                              r"2 \(output_2 better\), or a draw: 0 or a number between 1 and 2"),
    "half.annotations.json": (_alpaca(preference=0.5),
                              r"half.annotations.json: item 2: field 'preference': 0.5 is not 1"),
    "finegrained_empty.json": (b"[]", r"finegrained_empty.json: no rows"),
    # TRL's rows keep a pair_id as the generic schema's does, and refuse one that is not an id as it does.
    "trl_pair_id.jsonl": (b'{"prompt": "a", "chosen": "x", "rejected": "y", "pair_id": 7}\n'
                          b'{"prompt": "b", "chosen": "x", "rejected": "y", "pair_id": [7]}\n',
                          r"trl_pair_id.jsonl:2: field 'pair_id': expected a string or integer id"),
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


@pytest.mark.parametrize("pair_id", [[7], {"id": 7}, 7.5, True, "x" * 201, "7\x00"])
def test_a_pair_id_that_is_not_an_id_is_refused_alike_by_the_generic_and_trl_formats(tmp_path, pair_id):
    """TRL's rows ignored such a pair_id (the pair kept no external id, and an export's row was not known as one),
    where the generic schema refused it: one check serves both, with the same message."""
    messages = []
    for fmt, row in (("generic", {"prompt": "q", "response_a": "x", "response_b": "y"}),
                     ("trl", {"prompt": "q", "chosen": "x", "rejected": "y"})):
        path = _write(tmp_path / "prefs.jsonl", json.dumps({**row, "pair_id": pair_id}).encode())
        with pytest.raises(UserError, match=r"prefs.jsonl:1: field 'pair_id': ") as refused:
            read_records(path, fmt, rater="crowd")
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    for good in (7, "run3-0007"):  # an id, integer or text, is kept by both
        path = _write(tmp_path / "prefs.jsonl", json.dumps({"prompt": "q", "chosen": "x", "rejected": "y",
                                                            "pair_id": good}).encode())
        assert read_records(path, "trl", rater="crowd")[0].pair_id == str(good)


def test_integer_ids_with_a_gap_written_by_pandas_are_ids(tmp_path):
    """pandas stores a column of integer ids with a missing one as floats (7.0, NaN), and so does its Parquet: a
    whole float is its integer and NaN no id, in both formats that read pair_id."""
    import pandas as pd

    for fmt, row in (("generic", {"prompt": "q", "response_a": "x", "response_b": "y"}),
                     ("trl", {"prompt": "q", "chosen": "x", "rejected": "y"})):
        frame = pd.DataFrame([dict(row, pair_id=7), dict(row, response_b="z", rejected="z", pair_id=None)])
        assert str(frame["pair_id"].dtype) == "float64"
        frame[list(row) + ["pair_id"]].to_parquet(tmp_path / f"{fmt}.parquet")
        records = read_records(tmp_path / f"{fmt}.parquet", fmt, rater="crowd")
        assert [r.pair_id for r in records] == ["7", None]


def test_a_csv_with_a_byte_order_mark_imports(db_url, tmp_path):
    """Spreadsheet programs start CSV files with a UTF-8 BOM; it must not become part of the first column name."""
    path = _write(tmp_path / "excel.csv", "prompt,response_a,response_b\nWhat is 2+2?,4,5\n".encode("utf-8-sig"))
    result = import_into(db_url, path)
    assert (result.prompts, result.pairs) == (1, 1)
    with db.session_scope(db_url) as s:
        assert s.scalar(select(Prompt.conversation)) == [{"role": "user", "content": "What is 2+2?"}]


def test_a_rater_name_given_by_the_caller_obeys_the_same_limit(tmp_path):
    path = _write(tmp_path / "hh.jsonl", b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", '
                                          b'"rejected": "\\n\\nHuman: hi\\n\\nAssistant: go away"}\n')
    assert read_records(path, "hh-rlhf", rater="crowd")[0].judgments[0].rater == "crowd"
    with pytest.raises(UserError, match="--rater: field 'rater': is 201 characters"):
        read_records(path, "hh-rlhf", rater="x" * 201)


def test_as_gold_makes_pairs_already_there_gold_with_the_files_answer(db_url, tmp_path):
    rows = [{"prompt": f"q{i}", "response_a": "a", "response_b": "b", "rater": "crowd", "choice": choice}
            for i, choice in enumerate(["A>>B", "B>A", "tie"])]
    labels = _write(tmp_path / "labels.jsonl", "\n".join(map(json.dumps, rows)).encode())
    first = import_into(db_url, labels)
    assert (first.pairs, first.judgments, first.gold) == (3, 3, 0)
    extra = {"prompt": "q3", "response_a": "a", "response_b": "b", "rater": "crowd", "choice": "B>>A"}
    gold_file = _write(tmp_path / "gold.jsonl", "\n".join(map(json.dumps, rows + [extra])).encode())
    before = counts(db_url)
    made = import_into(db_url, gold_file, as_gold=True)
    assert (made.pairs, made.judgments, made.gold) == (1, 0, 4)  # three existing pairs and one new one
    with db.session_scope(db_url) as s:
        gold = {conversation[0]["content"]: choice for conversation, choice in s.execute(
            select(Prompt.conversation, Pair.gold_choice).join(Prompt, Prompt.id == Pair.prompt_id)
            .where(Pair.is_gold.is_(True)))}
    assert gold == {"q0": 2, "q1": -1, "q2": 0, "q3": -2}
    assert counts(db_url)["Judgment"] == before["Judgment"]  # --as-gold adds no judgments
    again = import_into(db_url, gold_file, as_gold=True)
    assert (again.pairs, again.gold) == (0, 0)


def _summarize_batch(path: Path) -> Path:
    """Four summarize-from-feedback comparisons, as the shared file holds them: each summary stored under its policy's
    name; the workers prefer the first summary of two posts and the second of the others."""
    rows = [_summarize(info={"id": f"t3_{i}", "post": f"Post number {i}.", "title": f"Title {i}", "subreddit": "cats"},
                       summaries=[{"text": f"first summary {i}", "policy": "sup1"},
                                  {"text": f"second summary {i}", "policy": "sup2"}],
                       choice=i % 2, worker=f"w{i}", extra={"confidence": 2 if i % 2 == 0 else 8}) for i in range(4)]
    return _write(path, b"\n".join(rows) + b"\n")


def _pairs(url: str, project: str) -> dict[tuple[str, str], int]:
    """A project's pairs, (A's text, B's text) -> the sum of their judgments' choices (relative to A)."""
    with db.session_scope(url) as s:
        p = get_project(s, project)
        return {(pair.response_a.content, pair.response_b.content): sum(
            s.scalars(select(Judgment.choice).where(Judgment.pair_id == pair.id)))
            for pair in s.scalars(select(Pair).where(Pair.project_id == p.id))}


def test_a_projects_own_export_imported_into_it_again_is_refused_whole(db_url, tmp_path):
    """Found by a user walk-through: importing a project's export back into the project added each pair's vote as
    one more judgment (HH's pairs had two judgments from one rater's single vote), and for summarize-from-feedback,
    whose summaries are stored under their policy's name, which an export does not carry, stored every pair a second
    time. An export's rows carry the pair_id they were written from: a row that is this project's pair of that id
    refuses the whole file, with what to do; `--as-gold` (which adds no judgments) may still use it."""
    import_into(db_url, _summarize_batch(tmp_path / "summarize_batch.jsonl"))
    with db.session_scope(db_url) as s:
        p = get_project(s, "p")
        export_project(s, p, tmp_path / "prefs.parquet")
        export_project(s, p, tmp_path / "prefs.jsonl")
    before, pairs = counts(db_url), _pairs(db_url, "p")
    for name in ("prefs.parquet", "prefs.jsonl"):
        with pytest.raises(UserError, match=rf"{name}(:1|: row 1): pair_id \d+ is pair \d+ of this project \(p\), the "
                                            r"same prompt and responses: the file is this project's own export, and "
                                            r"importing it again would count each pair's judgments twice\. Nothing was "
                                            r"imported; import it into another project, or with --as-gold"):
            import_into(db_url, tmp_path / name)
    assert counts(db_url) == before and _pairs(db_url, "p") == pairs
    # As gold answers the export's labels are the pairs' known answers: the same four pairs, no judgment added.
    gold = import_into(db_url, tmp_path / "prefs.jsonl", as_gold=True)
    assert (gold.pairs, gold.judgments, gold.gold) == (0, 0, 4)
    assert counts(db_url) == before
    with db.session_scope(db_url) as s:
        known = {(pair.response_a.content, pair.gold_choice) for pair in s.scalars(select(Pair))}
    assert known == {("first summary 0", 2), ("first summary 1", -2), ("first summary 2", 2), ("first summary 3", -2)}
    # Another database's export may reuse the same pair ids for the same texts: its pairs came from elsewhere (their
    # source says so), so it is not refused, only warned about as labels added to pairs already held.
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("".join(json.dumps({**json.loads(line), "source": "trl:their.parquet"}) + "\n"
                                 for line in (tmp_path / "prefs.jsonl").read_text().splitlines()))
    with pytest.warns(UserWarning, match="another project's export of pairs this project already holds"):
        assert import_into(db_url, elsewhere).judgments == 4


def test_another_projects_export_adds_its_labels_to_the_pairs_already_there(db_url, tmp_path):
    """An export imports into another project: as new pairs (keeping the pair_id as their external id) where that
    project holds none of them, and onto the pairs it holds, whatever their model names and whichever side won,
    where it does (summarize's pairs were stored a second time, under no policy name, with the export's chosen
    first). A vote both projects imported from one file counts twice then, which a warning says; a second import of
    the same export adds nothing."""
    raw = _summarize_batch(tmp_path / "summarize_batch.jsonl")
    import_into(db_url, raw, project="a")
    with db.session_scope(db_url) as s:
        export_project(s, get_project(s, "a"), tmp_path / "a.jsonl")
    exported = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]

    fresh = import_into(db_url, tmp_path / "a.jsonl", project="fresh")
    assert (fresh.prompts, fresh.pairs, fresh.judgments) == (4, 4, 4)
    with db.session_scope(db_url) as s:
        assert set(s.scalars(select(Pair.external_id).where(Pair.project_id == get_project(s, "fresh").id))) == {
            str(r["pair_id"]) for r in exported}

    import_into(db_url, raw, project="b")
    votes = _pairs(db_url, "b")
    assert votes == {("first summary 0", "second summary 0"): 2, ("first summary 1", "second summary 1"): -2,
                     ("first summary 2", "second summary 2"): 2, ("first summary 3", "second summary 3"): -2}
    with pytest.warns(UserWarning, match=r"a.jsonl:1: this row and 3 more rows are another project's export of pairs "
                                         r"this project already holds: each added its label as one more judgment, by "
                                         r"'trl:label'; where both projects took their votes from the same place"):
        added = import_into(db_url, tmp_path / "a.jsonl", project="b")
    assert (added.prompts, added.responses, added.pairs, added.judgments) == (0, 0, 0, 4)
    # The export's label (A>>B for a margin of 1) joins each pair facing its A: the second summaries won twice.
    assert _pairs(db_url, "b") == {pair: vote * 2 for pair, vote in votes.items()}
    again = import_into(db_url, tmp_path / "a.jsonl", project="b")
    assert (again.pairs, again.judgments) == (0, 0)


def test_a_raw_file_imported_after_an_export_of_it_adds_its_votes_to_the_pairs_already_there(db_url, tmp_path):
    """The other order of the test above: a project that imported an export first (its pairs stored under no model
    name, the winner first) and then the raw summarize file stored every pair a second time, under the policies'
    names. A row that names its models is the pair of the same prompt and texts held under no model name, in either
    order: its vote joins that pair, with a warning (the export's label was drawn from these same votes); importing the
    raw file again adds nothing, as it always has."""
    raw = _summarize_batch(tmp_path / "summarize_batch.jsonl")
    import_into(db_url, raw, project="a")
    with db.session_scope(db_url) as s:
        export_project(s, get_project(s, "a"), tmp_path / "a.jsonl")
    import_into(db_url, tmp_path / "a.jsonl", project="b")
    # A fifth worker saw post 0's summaries the other way round and also preferred "first summary 0" (index 1).
    swapped = _summarize(info={"id": "t3_0", "post": "Post number 0.", "title": "Title 0", "subreddit": "cats"},
                         summaries=[{"text": "second summary 0", "policy": "sup2"},
                                    {"text": "first summary 0", "policy": "sup1"}],
                         choice=1, worker="w9", extra={"confidence": 8})
    raw = _write(tmp_path / "summarize_batch.jsonl", raw.read_bytes() + swapped + b"\n")
    with pytest.warns(UserWarning, match=r"summarize_batch.jsonl:1: this row and 4 more rows are the same prompt and "
                                         r"texts as a pair this project already holds under no model name .* each "
                                         r"vote now counts twice"):
        added = import_into(db_url, raw, project="b")
    assert (added.prompts, added.responses, added.pairs, added.judgments) == (0, 0, 0, 5)
    # Each pair faces the export's winner as its A: the export's A>>B (margin 1) and the workers' votes, turned to
    # face it (post 0's two workers both preferred its first summary).
    assert _pairs(db_url, "b") == {
        ("first summary 0", "second summary 0"): 6, ("second summary 1", "first summary 1"): 4,
        ("first summary 2", "second summary 2"): 4, ("second summary 3", "first summary 3"): 4}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = import_into(db_url, raw, project="b")
    assert (again.prompts, again.responses, again.pairs, again.judgments) == (0, 0, 0, 0)
    assert not [w for w in caught if "already holds" in str(w.message)]
    # A generic row that names no model is a presentation order, matched by its own two responses only: (y, x) is a
    # new pair beside the (x, y) held, as it is within one file.
    mirrored = _write(tmp_path / "mirrored.jsonl", json.dumps(
        {"prompt": "SUBREDDIT: r/cats\nTITLE: Title 2\nPOST: Post number 2.\n\nTL;DR:",
         "response_a": "second summary 2", "response_b": "first summary 2"}).encode())
    assert import_into(db_url, mirrored, project="b").pairs == 1


def test_a_chosen_and_rejected_row_is_the_pair_of_its_two_texts_whichever_side_won(sqlite_url, tmp_path):
    """An export writes the winner first, so a pair whose raters preferred B comes back as (B, A): HH's pairs, which
    name no model, were stored again the other way round. A row of a chosen and a rejected response (TRL's, HH's) is
    the pair of its two texts in either order, its choice turned to face the pair's A; rows of a presentation order
    (the generic schema's response_a and response_b) keep theirs."""
    hh = [{"chosen": f"\n\nHuman: question {i}\n\nAssistant: good {i}",
           "rejected": f"\n\nHuman: question {i}\n\nAssistant: bad {i}"} for i in range(2)]
    raw = _write(tmp_path / "hh_small.jsonl", "\n".join(map(json.dumps, hh)).encode())
    import_into(sqlite_url, raw, project="a")
    import_into(sqlite_url, raw, project="b")
    with db.session_scope(sqlite_url) as s:  # two raters of project a find "bad 1" the better answer
        import_dataset(s, get_project(s, "a"), [
            {"prompt": "question 1", "response_a": "good 1", "response_b": "bad 1", "rater": r, "choice": "B>A"}
            for r in ("ann", "bob")])
        export_project(s, get_project(s, "a"), tmp_path / "a.jsonl")
    exported = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["chosen"][0]["content"] for r in exported] == ["good 0", "bad 1"]
    with pytest.warns(UserWarning, match="this project already holds"):
        added = import_into(sqlite_url, tmp_path / "a.jsonl", project="b")
    assert (added.responses, added.pairs, added.judgments) == (0, 0, 2)
    assert _pairs(sqlite_url, "b") == {("good 0", "bad 0"): 2, ("good 1", "bad 1"): 0}  # hh's A>B, the export's B>A
    # In one file too: "x over y" and "y over x" are one comparison with two opposite votes, not two pairs.
    both = _write(tmp_path / "trl.jsonl", b'{"prompt": "q", "chosen": "x", "rejected": "y"}\n'
                                          b'{"prompt": "q", "chosen": "y", "rejected": "x"}\n')
    assert (import_into(sqlite_url, both, project="c", rater="crowd").pairs, _pairs(sqlite_url, "c")) == (
        1, {("x", "y"): 0})
    mirrored = _write(tmp_path / "mirrored.jsonl", b'{"prompt": "q", "response_a": "x", "response_b": "y"}\n'
                                                   b'{"prompt": "q", "response_a": "y", "response_b": "x"}\n')
    assert import_into(sqlite_url, mirrored, project="d").pairs == 2


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


# Short strings, and strings around the 100- and 200-character column limits (domain, names, ids): SQLite
# stores any length, PostgreSQL refuses what does not fit, so only the long ones find a missing check.
chars = st.characters(blacklist_categories=("Cs",), min_codepoint=1)
text = st.one_of(st.text(chars, max_size=30), st.text(chars, min_size=95, max_size=260))
with_nul = st.text(st.characters(blacklist_categories=("Cs",)), max_size=5).map(lambda t: t + "\x00")
tag = st.one_of(text, st.builds(lambda kind, name: f"{kind}:{name}", st.sampled_from(["domain", "sensitive"]), text))
choice = st.sampled_from(["A>>B", "A>B", "tie", "B>A", "B>>A", 2, -1, "3"])
anything = st.one_of(st.none(), text, with_nul, st.integers(-5, 5), st.booleans(), st.lists(text, max_size=2),
                     st.dictionaries(text, text, max_size=2))


def mostly(good: st.SearchStrategy) -> st.SearchStrategy:
    """Usually a well-typed value (so rows get past the first check and reach the database), sometimes anything."""
    return st.integers(0, 9).flatmap(lambda n: anything if n == 0 else good)


prompt_part = st.fixed_dictionaries({"prompt": mostly(text)},
                                    optional={"tags": mostly(st.lists(tag, max_size=3)), "prompt_id": mostly(text)})
pair_part = st.fixed_dictionaries(
    {"response_a": mostly(text), "response_b": mostly(text)},
    optional={"model_a": mostly(text), "model_b": mostly(text), "gold": mostly(choice), "pair_id": mostly(text),
              "rater": mostly(text), "choice": mostly(choice), "both_bad": anything, "rationale": mostly(text),
              "criteria": mostly(st.dictionaries(text, choice, max_size=2))})
row = st.builds(lambda prompt, pair: {**prompt, **pair}, prompt_part, st.one_of(st.just({}), pair_part))
rows = st.lists(row, min_size=1, max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows)
def test_fuzzed_generic_rows_import_whole_or_fail_cleanly(db_url, rows):
    """Any row soup either imports completely or raises UserError and leaves the database as it was."""
    with db.session_scope(db_url) as s:
        if not _has_project(s):
            create_project(s, "p")
    before = counts(db_url)
    try:
        with db.session_scope(db_url) as s:
            result = import_dataset(s, get_project(s, "p"), rows, name="fuzz")
    except UserError as e:
        assert "fuzz: row" in str(e) or "no rows" in str(e)
        assert counts(db_url) == before
    else:
        after = counts(db_url)
        assert after["Pair"] - before["Pair"] == result.pairs
        assert after["Judgment"] - before["Judgment"] == result.judgments


def _has_project(session) -> bool:
    try:
        get_project(session, "p")
        return True
    except UserError:
        return False


def test_an_import_leaves_the_query_planner_statistics_of_what_it_wrote(db_url):
    # The next-pair query is planned from these: without them PostgreSQL plans a freshly imported queue as if
    # it held one pair (nested-loop anti-joins, 40 ms a request on 2,300 pairs instead of 2 ms).
    with db.session_scope(db_url) as s:
        import_dataset(s, create_project(s, "p"),
                       [{"prompt": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}"} for i in range(300)])
    with db.session_scope(db_url) as s:
        if db_url.startswith("postgresql"):
            rows = s.scalar(sql("SELECT reltuples FROM pg_class WHERE relname = 'pair'"))
        else:
            rows = s.scalar(sql("SELECT stat FROM sqlite_stat1 WHERE tbl = 'pair' LIMIT 1")).split()[0]
    assert int(rows) == 300


def test_summarize_rows_in_a_file_named_otherwise_say_which_format_reads_them(tmp_path):
    path = _write(tmp_path / "feedback.jsonl", _summarize() + b"\n")  # the format is told by the name: generic here
    with pytest.raises(UserError, match=r"^\S*feedback.jsonl:1: field 'prompt': is missing; .*(info, summaries, "
                                        r"choice, worker).* are read with --format summarize$"):
        read_records(path)
    assert len(read_records(path, "summarize")) == 1
    # A generic row with a column of that name is read as the generic row it is.
    generic = _write(tmp_path / "rows.jsonl", json.dumps({"prompt": "a", "summaries": [], "info": {}}).encode())
    assert read_records(generic)[0].prompt == [{"role": "user", "content": "a"}]


@pytest.mark.parametrize("name, first, message", [
    ("fgqa_slice.json", "finegrained_qa_dev_feedback.json",
     r"fgqa_slice.json: item 1: field 'prompt': is missing; FineGrainedRLHF QA-feedback items \(question, passages, "
     r"prediction 1, prediction 2, preference\) are read with --format finegrained-qa$"),
    ("evals.json", "alpaca_eval/alpaca-7b.annotations.json",
     r"evals.json: item 1: field 'prompt': is missing; AlpacaEval annotations \(instruction, output_1, output_2, "
     r"generator_1, generator_2, preference\) are read with --format alpaca-eval$"),
])
def test_a_known_format_in_a_file_named_otherwise_says_which_format_reads_it(tmp_path, data_dir, name, first, message):
    """The format is told by the file's name: a slice saved under another name is read as generic, and its error says
    which --format reads such rows, as it does for summarize's."""
    path = tmp_path / name
    path.write_text(json.dumps(json.loads((data_dir / first).read_text())[:2]))
    with pytest.raises(UserError, match=message):
        read_records(path)
    fmt = message.rsplit("--format ", 1)[1].rstrip("$")
    assert len(read_records(path, fmt)) >= 2
    with pytest.raises(UserError, match="are read with --format " + fmt):  # any other format read says so too
        read_records(path, "alpaca-eval" if fmt == "finegrained-qa" else "finegrained-qa")


def test_a_missing_finegrained_prediction_is_missing_not_a_type_error(tmp_path, data_dir):
    item = json.loads((data_dir / "finegrained_qa_dev_feedback.json").read_text())[0]
    del item["prediction 3"]
    path = _write(tmp_path / "finegrained.json", json.dumps([item]).encode())
    with pytest.raises(UserError, match=r"finegrained.json: item 1: field 'prediction 3': is missing$"):
        read_records(path)


@pytest.mark.parametrize("name, content, message", [
    ("cut.jsonl", b'{"prompt": "a"}\n{"prompt": "ok',
     r"cut.jsonl:2: invalid JSON \(Unterminated string starting at line 2, column 12\)$"),
    ("comma.json", b'[\n {"prompt": "a"},\n {"prompt": "b",}\n]\n',
     r"comma.json:3: invalid JSON \(Expecting property name enclosed in double quotes at line 3, column 17\)$"),
    ("lines.json", b'{"prompt": "a"}\n{"prompt": "b" "x": 1}\n',
     r"lines.json:2: invalid JSON \(Expecting ',' delimiter at line 2, column 16\)$"),
    ("gen.jsonl", b'{"prompt": "a", "response_a": "x", "response_b": "y", "generation_a": "{\\"t\\": 1,"}\n',
     r"gen.jsonl:1: field 'generation_a': is not valid JSON \(Expecting property name enclosed in double quotes "
     r"at line 1, column 9 of its text\)$"),
])
def test_every_json_error_names_file_line_and_column(tmp_path, name, content, message):
    """json's "Unterminated string starting at" ended in "at, column 12": the place now completes the sentence."""
    with pytest.raises(UserError, match=message):
        read_records(_write(tmp_path / name, content))


def test_labels_skipped_as_already_held_by_the_same_rater_are_warned_about(db_url, tmp_path):
    """Project b holds project a's export (each label by 'trl:label'); the file a was made from, TRL rows labelled by
    'trl:label' too, then adds nothing to b: the same rater's same label is already on each pair. That is right (no
    vote counts twice), but it was silent; a second import of one file stays silent, as it always was."""
    rows = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    original = _write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    import_into(db_url, original, project="a")
    with db.session_scope(db_url) as s:
        export_project(s, get_project(s, "a"), tmp_path / "a.jsonl")
    assert import_into(db_url, tmp_path / "a.jsonl", project="b").judgments == 3
    with pytest.warns(UserWarning, match=r"pairs.jsonl:1: this row and 2 more rows are labels this project already "
                                         r"holds: their pair came from another import and has the same judgment by "
                                         r"'trl:label' .*; 3 labels skipped, so that no vote counts twice$"):
        skipped = import_into(db_url, original, project="b")
    assert (skipped.pairs, skipped.judgments) == (0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert import_into(db_url, original, project="b").judgments == 0  # the same file again: nothing to say
        assert import_into(db_url, original, project="a").judgments == 0

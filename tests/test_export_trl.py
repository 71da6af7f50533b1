"""The exported dataset is TRL's conversational preference format: it loads and trains in plain RewardTrainer."""

from __future__ import annotations

import json

import datasets
import pytest
from sqlalchemy import select, update

from collect import db
from collect.errors import UserError
from collect.export import export_project
from collect.formats import CHOICE_LABELS, read_records
from collect.ingest import import_dataset, import_file
from collect.judgments import judgments_frame
from collect.models import Judgment, Pair, Prompt, Response
from collect.projects import create_project, get_project


def build(url: str) -> None:
    rows = []
    for i in range(12):
        pair = {"prompt": f"Say something kind, number {i}", "response_a": f"You are great {i}",
                "response_b": f"You are awful {i}", "model_a": "kind", "model_b": "rude"}
        rows.append({**pair, "rater": "alice", "choice": "A>>B"})
        rows.append({**pair, "rater": "bob", "choice": "A>B" if i % 3 else "B>A"})
        rows.append({**pair, "rater": "carol", "choice": "A>B"})
    rows.append({"prompt": "tied", "response_a": "x", "response_b": "y", "rater": "alice", "choice": "tie"})
    rows.append({"prompt": "both bad", "response_a": "bad1", "response_b": "bad2", "rater": "alice",
                 "choice": "A>B", "both_bad": True})
    with db.session_scope(url) as s:
        import_dataset(s, create_project(s, "p"), rows)


def test_export_formats_and_provenance(db_url, tmp_path):
    build(db_url)
    with db.session_scope(db_url) as s:
        result = export_project(s, get_project(s, "p"), tmp_path / "prefs.jsonl", include_ties=True)
    assert (result.rows, result.ties, result.both_bad) == (12, 1, 1)
    rows = [json.loads(line) for line in open(tmp_path / "prefs.jsonl")]
    assert {r["chosen"][0]["content"].split()[2] for r in rows} == {"great"}
    unanimous = [r for r in rows if r["agreement"] == 1.0]
    split = [r for r in rows if r["agreement"] < 1.0]
    assert len(split) == 4 and all(r["n_judgments"] == 3 for r in rows)
    assert unanimous[0]["margin"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert split[0]["margin"] == pytest.approx((1.0 - 0.5 + 0.5) / 3)
    ties = [json.loads(line) for line in open(tmp_path / "prefs.ties.jsonl")]
    assert sorted(t["kind"] for t in ties) == ["both_bad", "tie"]
    meta = json.loads((tmp_path / "prefs.jsonl.meta.json").read_text())
    assert meta["aggregation"] == "majority" and meta["rows"] == 12

    with db.session_scope(db_url) as s:
        folder = export_project(s, get_project(s, "p"), tmp_path / "saved", aggregation="weighted",
                                min_confidence=0.7)
    loaded = datasets.load_from_disk(folder.path)
    # The weighted model keeps the lone tie a tie, as majority does (it once read it as a weak A, against
    # the only judgment): a tie is left out of the preferences, not dropped for low confidence.
    assert len(loaded) == 12 and folder.ties == 1 and folder.below_confidence == 0
    assert json.loads((tmp_path / "saved" / "prefloop.json").read_text())["aggregation"] == "weighted"


def test_the_side_file_of_ties_keeps_what_a_both_bad_judgment_said_through_import(sqlite_url, tmp_path):
    """Raters who mark both responses bad may still find one better (A>B, both bad). The side file wrote such a pair
    as `both_bad` with the better side as `chosen`, as it writes a tie's A, and import read every `both_bad` row as a
    tie: the lean was lost. `chosen_better` says which it is, and import reads it: each judgment comes back as it was
    said, turned to face the pair's A (the side file's `chosen`)."""
    said = {"q1": ("A>B", True), "q2": ("B>>A", True), "q3": ("tie", True), "q4": ("tie", False), "q5": ("A>B", False)}
    with db.session_scope(sqlite_url) as s:
        import_dataset(s, create_project(s, "a"), [
            {"prompt": q, "response_a": f"{q} x", "response_b": f"{q} y", "rater": "alice", "choice": choice,
             "both_bad": bad} for q, (choice, bad) in said.items()])
    for name, loader in (("prefs.parquet", "parquet"), ("prefs.jsonl", "json")):
        with db.session_scope(sqlite_url) as s:
            result = export_project(s, get_project(s, "a"), tmp_path / name, include_ties=True)
        side = datasets.load_dataset(loader, data_files=result.ties_path)["train"]
        assert {r["prompt"][0]["content"]: (r["kind"], r["chosen_better"]) for r in side} == {
            "q1": ("both_bad", True), "q2": ("both_bad", True), "q3": ("both_bad", False), "q4": ("tie", False)}
        with db.session_scope(sqlite_url) as s:
            back = create_project(s, f"back from {name}")
            import_file(s, back, result.ties_path)
        with db.session_scope(sqlite_url) as s:
            judged = {}
            for judgment in s.scalars(select(Judgment).where(Judgment.project_id == get_project(
                    s, f"back from {name}").id)):
                pair = s.get(Pair, judgment.pair_id)
                facing_x = 1 if pair.response_a.content.endswith("x") else -1
                judged[pair.prompt.conversation[0]["content"]] = (judgment.choice * facing_x, judgment.both_bad)
        assert judged == {q: (CHOICE_LABELS[choice], bad) for q, (choice, bad) in said.items() if q != "q5"}
    # A tie that does not call both sides bad prefers neither: `chosen_better` beside it is refused, as is a value
    # that is not a boolean.
    for row, problem in (({"kind": "tie", "chosen_better": True}, "is true beside kind = 'tie', a tie that does not "
                                                                   "call both sides bad"),
                         ({"kind": "both_bad", "chosen_better": "maybe"}, "'maybe' is not a boolean")):
        path = tmp_path / "ties.jsonl"
        path.write_text(json.dumps({"prompt": "q", "chosen": "x", "rejected": "y", **row}) + "\n")
        with pytest.raises(UserError, match=rf"ties.jsonl:1: field 'chosen_better': {problem}"):
            read_records(path, "trl", rater="crowd")


def test_export_writes_only_where_an_export_belongs_and_replaces_an_earlier_one_whole(sqlite_url, tmp_path):
    """Exporting into a model's folder replaced its prefloop.json; x.csv or x.jsonl.gz made a folder so named."""
    build(sqlite_url)
    here = tmp_path / "exports"  # the database is in tmp_path
    here.mkdir()
    model = here / "rm"
    model.mkdir()
    (model / "prefloop.json").write_text(json.dumps({"kind": "reward_model"}))
    (here / "notes.jsonl").write_text("mine\n")
    with db.session_scope(sqlite_url) as s:
        project = get_project(s, "p")
        for out, said in ((model, "holds a reward_model (prefloop.json says so)"),
                          (here / "x.csv", "export writes .parquet, .jsonl or .json files, or a save_to_disk "
                                           "folder; not .csv"),
                          (here / "x.jsonl.gz", "not .gz"),
                          (here / "notes.jsonl", "exists and is not an earlier export (no notes.jsonl.meta.json "
                                                     "beside it)"),
                          (here, "holds other files")):
            with pytest.raises(UserError, match=said.replace("(", r"\(").replace(")", r"\)")):
                export_project(s, project, out)
        for bad in (float("nan"), -0.1, 1.5):
            with pytest.raises(UserError, match=r"min_confidence \(--min-confidence\) must be between 0 and 1"):
                export_project(s, project, here / "new.jsonl", min_confidence=bad)
        assert json.loads((model / "prefloop.json").read_text()) == {"kind": "reward_model"}
        assert sorted(p.name for p in here.iterdir()) == ["notes.jsonl", "rm"]
        assert (here / "notes.jsonl").read_text() == "mine\n"

        # An earlier export is replaced: a folder whole, and its side file of ties goes when none is asked for.
        export_project(s, project, here / "saved", include_ties=True)
        (here / "saved" / "stale.txt").write_text("x")
        export_project(s, project, here / "saved")
        assert not (here / "saved" / "stale.txt").exists() and not (here / "saved.ties").exists()
        export_project(s, project, here / "prefs.parquet", include_ties=True)
        assert (here / "prefs.ties.parquet").is_file()
        result = export_project(s, project, here / "prefs.parquet")
        assert result.ties_path is None and not (here / "prefs.ties.parquet").exists()
        # However the path is spelt: the side file is known by its name beside the export.
        export_project(s, project, here / "t.jsonl", include_ties=True)
        export_project(s, project, here / ".." / "exports" / "t.jsonl")
        assert not (here / "t.ties.jsonl").exists()
        # Whatever else has the side file's name is not replaced.
        (here / "u.ties.parquet").write_text("precious")
        with pytest.raises(UserError, match=r"u.ties.parquet: exists and is not this export's earlier side file"):
            export_project(s, project, here / "u.parquet", include_ties=True)
        assert (here / "u.ties.parquet").read_text() == "precious" and not (here / "u.parquet").exists()
        # A folder may have a dot in its name (hh.harmless); its side folder is hh.harmless.ties.
        assert export_project(s, project, here / "hh.harmless", include_ties=True).ties_path == str(
            here / "hh.harmless.ties")
        meta = json.loads((here / "prefs.parquet.meta.json").read_text())
        assert meta["kind"] == "prefloop.export" and meta["ties_path"] is None

        # Nothing to export: said, and the file still has every column, typed.
        empty = create_project(s, "empty")
        with pytest.warns(UserWarning, match=r"no preference pairs to export \(of empty: 0 pair\(s\) not judged.*; it "
                                             r"holds no rows$"):
            export_project(s, empty, here / "empty.parquet")
        with pytest.warns(UserWarning, match="holds no rows"):
            export_project(s, empty, here / "empty_folder")
    assert len(datasets.load_from_disk(str(here / "empty_folder"))) == 0
    import pyarrow.parquet as pq  # datasets' loaders refuse a file of no rows ("corresponds to no data")

    loaded = pq.read_table(here / "empty.parquet")
    assert loaded.num_rows == 0 and loaded.column_names == ["prompt", "chosen", "rejected", "margin", "confidence",
                                                            "pair_id", "n_judgments", "agreement", "source", "domain"]
    assert str(loaded.schema.field("margin").type) == "double" and str(loaded.schema.field("source").type) == "string"


def test_adjudication_overrides_the_vote(sqlite_url, tmp_path):
    build(sqlite_url)
    with db.session_scope(sqlite_url) as s:
        p = get_project(s, "p")
        judged = s.scalars(select(Judgment).where(Judgment.project_id == p.id)).first()
        admin_rater = judged.rater_id
        s.add(Judgment(project_id=p.id, pair_id=judged.pair_id, rater_id=admin_rater, choice=-2,
                       kind="adjudication"))
    with db.session_scope(sqlite_url) as s:
        export_project(s, get_project(s, "p"), tmp_path / "o.jsonl")
    row = next(r for r in map(json.loads, open(tmp_path / "o.jsonl")) if r["pair_id"] == judged.pair_id)
    assert row["chosen"][0]["content"].startswith("You are awful") and row["confidence"] == 1.0
    # The raters' agreement is with the admin's answer, which overruled them: no row reads as unanimous for B.
    with db.session_scope(sqlite_url) as s:
        votes = list(s.scalars(select(Judgment.choice).where(Judgment.pair_id == judged.pair_id,
                                                             Judgment.kind != "adjudication")))
    assert row["n_judgments"] == len(votes)
    assert row["agreement"] == pytest.approx(sum(v < 0 for v in votes) / len(votes))
    assert row["agreement"] < 0.5


def test_flagged_and_retired_pairs_leave_the_export_and_the_statistics(db_url, tmp_path):
    build(db_url)
    with db.session_scope(db_url) as s:
        p = get_project(s, "p")
        kind = sorted(s.scalars(select(Judgment.pair_id).where(Judgment.project_id == p.id).distinct()))[:2]
        s.execute(update(Pair).where(Pair.id == kind[0]).values(status="flagged"))
        s.execute(update(Pair).where(Pair.id == kind[1]).values(status="retired"))
    with db.session_scope(db_url) as s:
        p = get_project(s, "p")
        result = export_project(s, p, tmp_path / "prefs.jsonl")
        frame = judgments_frame(s, p.id)
    exported = {r["pair_id"] for r in map(json.loads, open(tmp_path / "prefs.jsonl"))}
    assert result.rows == 10 and result.not_active == 2
    assert not exported & set(kind)
    assert not set(frame["pair_id"]) & set(kind) and len(frame) == 38 - 6  # three judgments each
    meta = json.loads((tmp_path / "prefs.jsonl.meta.json").read_text())
    assert meta["not_active"] == 2
    # The line `prefloop export` and the dashboard both print:
    assert result.summary() == ("10 preference pairs (majority aggregation); left out: 1 ties, 1 both-bad, "
                                "0 below confidence 0, 0 not judged yet, 2 flagged or retired")


def test_gold_pairs_export_their_known_answer_not_the_vote(db_url, tmp_path):
    rows = [{"prompt": "Capital of Australia?", "response_a": "Canberra", "response_b": "Sydney", "gold": "A>B",
             "rater": name, "choice": "B>>A"} for name in ("alice", "bob", "carol")]
    with db.session_scope(db_url) as s:
        import_dataset(s, create_project(s, "p"), rows)
    with db.session_scope(db_url) as s:
        result = export_project(s, get_project(s, "p"), tmp_path / "gold.jsonl")
    (row,) = map(json.loads, open(tmp_path / "gold.jsonl"))
    assert result.rows == 1
    assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("Canberra", "Sydney")
    assert (row["confidence"], row["margin"], row["n_judgments"]) == (1.0, 0.5, 3)
    assert row["agreement"] == 0.0  # all three raters said B>>A: none agrees with the known answer


def test_an_interrupted_export_leaves_the_earlier_one_whole(sqlite_url, tmp_path, monkeypatch):
    """A file export is written beside its name and renamed over it: Ctrl-C or a full disk part way used to leave
    a few bytes that nothing could read, beside the earlier export's meta still vouching for it."""
    build(sqlite_url)
    out = tmp_path / "prefs.parquet"
    with db.session_scope(sqlite_url) as s:
        export_project(s, get_project(s, "p"), out)
    before, meta = out.read_bytes(), (tmp_path / "prefs.parquet.meta.json").read_text()

    def breaks_part_way(self, path, *args, **kwargs):
        open(path, "wb").write(b"PAR1")
        raise OSError("No space left on device")

    monkeypatch.setattr(datasets.Dataset, "to_parquet", breaks_part_way)
    with pytest.raises(OSError, match="No space left"):
        with db.session_scope(sqlite_url) as s:
            export_project(s, get_project(s, "p"), out, aggregation="weighted")
    assert out.read_bytes() == before and (tmp_path / "prefs.parquet.meta.json").read_text() == meta
    assert not list(tmp_path.glob("*.partial"))  # nor left behind


def test_an_export_writes_through_a_link_and_keeps_the_files_permissions(sqlite_url, tmp_path):
    build(sqlite_url)
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "prefs.jsonl", tmp_path / "latest.jsonl"
    with db.session_scope(sqlite_url) as s:
        export_project(s, get_project(s, "p"), target)
    target.chmod(0o640)
    before = target.read_text()
    link.symlink_to(target)
    (tmp_path / "latest.jsonl.meta.json").write_text(target.with_name("prefs.jsonl.meta.json").read_text())
    with db.session_scope(sqlite_url) as s:
        export_project(s, get_project(s, "p"), link, aggregation="weighted")
    assert link.is_symlink() and oct(target.stat().st_mode & 0o777) == "0o640"
    assert target.read_text() != before  # the weighted export, written through the link


def test_export_trains_unchanged_in_plain_trl_reward_trainer(sqlite_url, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from reward.models import checkpointing_argument
    from tests.tiny_models import tiny_reward_model

    build(sqlite_url)
    with db.session_scope(sqlite_url) as s:
        export_project(s, get_project(s, "p"), tmp_path / "prefs.parquet")
    train = datasets.load_dataset("parquet", data_files=str(tmp_path / "prefs.parquet"))["train"]
    model_dir = tiny_reward_model(tmp_path / "rm")
    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1),
        args=RewardConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                          bf16=False, **checkpointing_argument(False), report_to=[], use_cpu=True, logging_steps=1,
                          save_strategy="no"),
        train_dataset=train,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    result = trainer.train()
    assert result.global_step == 3 and result.training_loss > 0


def test_export_writes_pairs_in_id_order_on_every_database(db_url, tmp_path):
    """Pairs are read in id order: PostgreSQL's table scan returns an updated row after the others."""
    build(db_url)
    with db.session_scope(db_url) as s:
        first = s.scalar(select(Pair).order_by(Pair.id).limit(1))
        # New versions of the first pair's rows, which PostgreSQL's table scans then return after the others (the
        # plan may start from any of the four tables).
        for table, row_id in ((Pair, first.id), (Prompt, first.prompt_id), (Response, first.response_a_id),
                              (Response, first.response_b_id)):
            s.execute(update(table).where(table.id == row_id).values(created_at=table.created_at))
        first = first.id
    with db.session_scope(db_url) as s:
        export_project(s, get_project(s, "p"), tmp_path / "prefs.jsonl", include_ties=True)
    for name in ("prefs.jsonl", "prefs.ties.jsonl"):
        ids = [row["pair_id"] for row in map(json.loads, open(tmp_path / name))]
        assert ids == sorted(ids), name
    assert json.loads(next(open(tmp_path / "prefs.jsonl")))["pair_id"] == first

"""The `prefloop` command: the same flow as the Python API, one clear line for every user error."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from sqlalchemy import func, select

from collect import db as database
from collect.ingest import import_dataset
from collect.models import AuditEvent, Pair, Project, Rater
from collect.projects import ProjectSettings, add_rater, create_project, get_project, get_rater
from tests.conftest import REPO
from tests.postgres import free_port


def prefloop(*args: str, db: str, check: bool = True, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    # No PREFLOOP_* settings from the caller's shell (only those given in `env`); a new session has no terminal, so
    # a password prompt reads the (empty) stdin instead of /dev/tty.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLOOP_")} | (env or {})
    result = subprocess.run([sys.executable, "-m", "apps.cli", *args, "--db", db], cwd=REPO, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=300, env=env, start_new_session=True)
    if check and result.returncode != 0:
        raise AssertionError(f"prefloop {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def said(result: subprocess.CompletedProcess) -> str:
    """A command's output as one line: rich wraps long lines at the terminal's width (80 through a pipe)."""
    return " ".join(result.stdout.split())


def test_the_whole_collection_flow(tmp_path, data_dir):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    prefloop("init", "--admin", "root", "--password", "s3cret", db=db)
    prefloop("project", "create", "hh", "--overlap", "3", "--description", "HH, first round",
             "--rubric", "helpfulness", "--rubric", "harmlessness: no help with harm, ever", db=db)
    prefloop("rater", "add", "alice", "--password", "pw", "--project", "hh", "--expertise", "domain:medicine", db=db)
    out = prefloop("import", str(data_dir / "hh_harmless_base_test.jsonl.gz"), "--project", "hh", db=db).stdout
    assert "2312 pairs" in out
    status = json.loads(prefloop("status", "--project", "hh", "--json", db=db).stdout)[0]
    assert (status["pairs"], status["judgments"], status["raters"]) == (2312, 2312, 1)
    assert status["judgments_needed"] == 2312 * 2
    out = said(prefloop("export", str(tmp_path / "hh.parquet"), "--project", "hh", "--aggregation", "weighted",
                        db=db))
    assert "exported 2312 preference pairs (weighted aggregation)" in out and "0 flagged or retired" in out
    raters = prefloop("rater", "list", db=db).stdout
    assert "alice" in raters and "root" in raters
    assert "hh" in prefloop("project", "list", db=db).stdout
    with database.session_scope(db) as s:
        project = s.scalar(select(Project).where(Project.name == "hh"))
        assert project.description == "HH, first round"
        assert project.rubric == [{"name": "helpfulness", "description": ""},  # as the dashboard's rubric box reads it
                                  {"name": "harmlessness", "description": "no help with harm, ever"}]
    database.get_engine(db).dispose()


@pytest.mark.parametrize("args, message", [
    (["status"], "run `prefloop init` first"),
    (["export", "out.jsonl", "--project", "x"], "run `prefloop init` first"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    result = prefloop(*args, db=f"sqlite:///{tmp_path / 'none.db'}", check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # rich may wrap one long line


@pytest.mark.parametrize("args, message", [
    (["export"], "Missing argument"),
    (["status", "--no-such-option"], "No such option"),
])
def test_usage_errors_show_usage_without_traceback(tmp_path, args, message):
    result = prefloop(*args, db=f"sqlite:///{tmp_path / 'none.db'}", check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Usage: " in result.stderr and "Traceback" not in result.stderr


def test_bad_import_names_the_line_and_exit_code(tmp_path):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    prefloop("init", db=db)
    prefloop("project", "create", "p", db=db)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "response_a": "a", "response_b": "b"}\n{"prompt": 3}\n')
    result = prefloop("import", str(bad), "--project", "p", db=db, check=False)
    assert result.returncode == 1 and "bad.jsonl:2: field 'prompt'" in result.stderr.replace("\n", "")
    assert "Traceback" not in result.stderr
    status = json.loads(prefloop("status", "--json", db=db).stdout)[0]
    assert status["prompts"] == 0
    missing = prefloop("import", str(tmp_path / "data[old].jsonl"), "--project", "p", db=db, check=False)
    # printed as it is: "[old]" is part of the name, not rich markup
    assert missing.returncode == 1 and "data[old].jsonl: no such file" in missing.stderr
    dup = prefloop("project", "create", "p", db=db, check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr


UNREACHABLE = f"postgresql+psycopg://prefloop:hunter2@127.0.0.1:{free_port()}/prefloop"


@pytest.mark.parametrize("args, url, message", [
    (["init"], "not a url", "not a usable database URL"),
    (["status"], "nosuchdb://somewhere/x", "not a usable database URL"),
    (["serve"], "postgresql+psycopg2://prefloop@127.0.0.1/prefloop", "driver is not installed"),
    (["init"], UNREACHABLE, "cannot use the database at postgresql+psycopg://prefloop:***@127.0.0.1"),
    (["project", "list"], UNREACHABLE, "Connection refused"),
    (["export", "out.jsonl", "--project", "p"], UNREACHABLE, "cannot use the database"),
    (["serve"], UNREACHABLE, "cannot use the database"),
])
def test_database_problems_are_one_line(args, url, message):
    """A bad --db URL, a missing driver, a server that is not there: one line, exit 1, no traceback."""
    result = prefloop(*args, db=url, check=False)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    assert "hunter2" not in result.stderr  # the password in the URL is not printed


@pytest.mark.parametrize("args", [["init"], ["status"], ["export", "out.jsonl", "--project", "p"]])
def test_a_file_that_is_not_a_database_is_one_line_and_left_as_it_was(tmp_path, args):
    """A Parquet file named as --db gave SQLite's 'file is not a database' under a page of traceback."""
    named = tmp_path / "prefs.parquet"
    named.write_bytes(b"PAR1" + bytes(200))
    result = prefloop(*args, db=f"sqlite:///{named}", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: --db sqlite:///{named}: not a database (file is not a database)"
    assert named.read_bytes() == b"PAR1" + bytes(200)


@pytest.mark.parametrize("spelling", ["sqlite:///{path}", "sqlite:///file:{path}?uri=true",
                                      "sqlite:///file://{path}?mode=rwc&uri=true"])
def test_a_database_that_is_not_there_is_not_created_by_a_command_that_refuses_it(tmp_path, spelling):
    missing = tmp_path / "typo.db"
    url = spelling.format(path=missing)
    result = prefloop("status", db=url, check=False)
    assert result.returncode == 1 and "run `prefloop init` first" in result.stderr
    assert not missing.exists()
    prefloop("init", db=url)  # init does make it
    assert missing.is_file()
    assert "no projects yet" in prefloop("project", "list", db=url).stdout  # the made file is the database it reads


def test_a_password_prompt_at_end_of_input_says_what_to_do(tmp_path):
    result = prefloop("init", "--admin", "root", db=f"sqlite:///{tmp_path / 'p.db'}", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no password entered: pass --password or set PREFLOOP_ADMIN_PASSWORD" in result.stderr


def run_cli(*args: str, monkeypatch) -> None:
    """`prefloop ARGS` in this process (to watch what it does from inside); a non-zero exit fails the test."""
    from apps import cli

    monkeypatch.setattr(sys, "argv", ["prefloop", *args])
    try:
        cli.main()
    except SystemExit as e:
        assert not e.code, f"prefloop {' '.join(args)} exited with {e.code}"


def test_import_parses_the_file_before_opening_a_transaction(sqlite_url, tmp_path, monkeypatch):
    """On SQLite a transaction holds the one write lock: parsing a large file inside one would stall every rater."""
    from collect import ingest

    with database.session_scope(sqlite_url) as s:
        create_project(s, "p")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response_a": "a", "response_b": "b"}) + "\n"
                            for i in range(20)))
    open_sessions: list[int] = []
    parsed_with_open_sessions: list[int] = []
    real_scope, real_read = database.session_scope, ingest.read_file

    @contextmanager
    def counted_scope(url=None):
        open_sessions.append(1)
        try:
            with real_scope(url) as session:
                yield session
        finally:
            open_sessions.pop()

    def watched_read(*args, **kwargs):
        parsed_with_open_sessions.append(len(open_sessions))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(database, "session_scope", counted_scope)
    monkeypatch.setattr(ingest, "read_file", watched_read)
    run_cli("import", str(path), "--project", "p", "--db", sqlite_url, monkeypatch=monkeypatch)
    assert parsed_with_open_sessions == [0]
    with real_scope(sqlite_url) as s:
        assert s.scalar(select(func.count(Pair.id))) == 20


def test_export_shows_progress(sqlite_url, tmp_path, monkeypatch):
    from apps import cli

    with database.session_scope(sqlite_url) as s:
        import_dataset(s, create_project(s, "p"), [
            {"prompt": f"q{i}", "response_a": "a", "response_b": "b", "rater": "ann", "choice": 1} for i in range(7)])
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, force_terminal=True, width=120, markup=False))
    run_cli("export", str(tmp_path / "out[1].jsonl"), "--project", "p", "--db", sqlite_url, monkeypatch=monkeypatch)
    shown = Text.from_ansi(screen.getvalue()).plain
    assert "exporting out[1].jsonl" in shown and "7/7" in shown  # the bar, filled, and the name as it is
    assert "exported 7 preference pairs" in shown


def test_prefloop_leaves_the_process_group_it_ran_in_also_after_an_error(sqlite_url, tmp_path, monkeypatch):
    """Under `accelerate launch` each rank runs `prefloop` inside a process group; exiting without leaving it can
    kill a rank that already saved its work with SIGABRT in the interpreter's teardown (pytorch/pytorch#179291)."""
    import torch.distributed as dist

    from apps import cli

    def join(store: str) -> None:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / store}", rank=0, world_size=1)

    try:
        join("store-ok")
        run_cli("project", "list", "--db", sqlite_url, monkeypatch=monkeypatch)
        assert not dist.is_initialized()
        join("store-error")
        monkeypatch.setattr(sys, "argv", ["prefloop", "export", str(tmp_path / "out.jsonl"), "--project", "nope",
                                          "--db", sqlite_url])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        assert exit_.value.code == 1 and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ctrl_c_outside_a_commands_own_handling_says_interrupted_and_exits_130(monkeypatch, capsys):
    """Typer, outside standalone mode, turns a KeyboardInterrupt (Ctrl-C while a model loads or saves) into exit
    code 130 and returns it: `prefloop` exited 0, silently, with nothing saved."""
    from apps import cli
    from reward import score

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(score, "score_file", interrupted)
    monkeypatch.setattr(sys, "argv", ["prefloop", "reward", "score", "--model", "rm", "--data", "pairs.jsonl",
                                      "--out", "unused.jsonl"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_every_options_name_is_shown_whole_in_help_on_an_80_column_terminal():
    """Rich's help table cut `--gradient-accumulation-steps` to `--gradient-accumulation-st…` at 80 columns."""
    import re

    import click
    import typer.main
    from typer.testing import CliRunner

    from apps.cli import app

    def commands(command: click.Command, path: list[str]):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from commands(sub, [*path, name])

    runner = CliRunner()
    checked = 0
    for path, command in commands(typer.main.get_command(app), []):
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}).output
        assert "…" not in shown and all(len(line) <= 80 for line in shown.splitlines()), path
        for option in (opt for param in command.params for opt in param.opts if opt.startswith("--")):
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", shown), (path, option)
            checked += 1
    assert checked > 100


def test_two_criteria_in_one_rubric_value_are_refused(tmp_path):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    prefloop("init", db=db)
    result = prefloop("project", "create", "hh", "--rubric", "helpfulness,harmlessness", db=db, check=False)
    assert result.returncode == 1 and "one criterion a line (or per --rubric)" in result.stderr
    assert "hh" not in prefloop("project", "list", db=db).stdout


def test_an_existing_rater_joins_a_project_and_changes_expertise_with_rater_update(tmp_path):
    """What the dashboard's Raters tab does (add_member, update_rater), from the command line."""
    db = f"sqlite:///{tmp_path / 'p.db'}"
    prefloop("init", "--admin", "root", "--password", "s3cret", db=db)
    prefloop("project", "create", "hh", db=db)
    prefloop("project", "create", "med", db=db)
    prefloop("rater", "add", "alice", "--password", "pw", "--project", "hh", "--expertise", "domain:law", db=db)
    again = prefloop("rater", "add", "alice", "--password", "pw", "--project", "med", db=db, check=False)
    # add is for new people only, and says what changes an existing one
    said_again = " ".join(again.stderr.split())
    assert again.returncode == 1 and "already exists: change their projects" in said_again
    assert "`prefloop rater update`" in said_again

    out = said(prefloop("rater", "update", "alice", "--admin", "root", "--project", "med", "--project", "hh",
                        "--expertise", "domain:medicine", "--sensitive-opt-in", "Violence, self-harm", db=db))
    assert "now a member of med" in out and "already a member of hh" in out
    assert "alice" in prefloop("rater", "list", "--project", "med", db=db).stdout
    prefloop("rater", "update", "alice", "--admin", "root", "--expertise", "", db=db)  # '' clears; opt-ins stay
    refused = prefloop("rater", "update", "alice", "--admin", "alice", "--expertise", "domain:x", db=db, check=False)
    assert refused.returncode == 1 and "admins only" in refused.stderr
    nothing = prefloop("rater", "update", "alice", "--admin", "root", db=db, check=False)
    assert nothing.returncode == 1 and "nothing to change" in nothing.stderr

    with database.session_scope(db) as s:
        alice = s.scalar(select(Rater).where(Rater.name == "alice"))
        assert (alice.expertise, alice.sensitive_opt_in) == ([], ["self-harm", "violence"])
        root = s.scalar(select(Rater).where(Rater.name == "root")).id
        actions = [(e.action, e.actor_id) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions[-3:] == [("rater.update", root), ("membership.add", root), ("rater.update", root)]
    database.get_engine(db).dispose()


def test_a_rater_without_a_password(tmp_path):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    prefloop("init", db=db)
    out = said(prefloop("rater", "add", "sso-user", "--no-password", db=db))
    assert "only through an SSO proxy" in out
    both = prefloop("rater", "add", "bob", "--no-password", "--password", "pw", db=db, check=False)
    assert both.returncode == 1 and "--no-password and --password both given" in both.stderr
    # The bulk-adding variable is set for the others; this one still gets none.
    prefloop("rater", "add", "sso-too", "--no-password", db=db, env={"PREFLOOP_RATER_PASSWORD": "for-the-rest"})
    prefloop("rater", "add", "carol", db=db, env={"PREFLOOP_RATER_PASSWORD": "for-the-rest"})
    with database.session_scope(db) as s:
        hashes = {r.name: r.password_hash for r in s.scalars(select(Rater))}
    assert (hashes["sso-user"], hashes["sso-too"]) == (None, None) and hashes["carol"] and "bob" not in hashes
    database.get_engine(db).dispose()


def flagged_project(url: str) -> dict[str, int]:
    """Project hh with two pairs that a rater flagged as harmful, project other, and an admin."""
    from collect.assign import flag_harmful, next_assignment

    with database.session_scope(url) as s:
        hh = create_project(s, "hh", ProjectSettings(overlap=1))
        create_project(s, "other")
        import_dataset(s, hh, [{"prompt": f"q{i}", "response_a": "a", "response_b": f"b{i}"} for i in range(3)])
        ids = {"root": add_rater(s, "root", "pw", role="admin").id, "ann": add_rater(s, "ann", "pw", projects=[hh]).id}
    for reason in ("graphic violence", "personal data"):
        with database.session_scope(url) as s:
            served = next_assignment(s, get_project(s, "hh").id, ids["ann"])
            flag_harmful(s, ids["ann"], served.assignment_id, reason)
    with database.session_scope(url) as s:
        ids["flagged"] = sorted(s.scalars(select(Pair.id).where(Pair.status == "flagged")))
    return ids


def test_flagged_pairs_are_listed_then_kept_or_retired(sqlite_url):
    """The dashboard's Flagged tab (flagged_pairs, review_flag) from the command line."""
    ids = flagged_project(sqlite_url)
    kept, retired = ids["flagged"]
    listed = prefloop("flagged", "list", "--project", "hh", db=sqlite_url).stdout  # cells wrap at 80 columns
    assert "graphic" in listed and "personal" in listed and "ann" in listed

    elsewhere = prefloop("flagged", "keep", "--project", "other", "--pair", str(kept), "--admin", "root",
                         db=sqlite_url, check=False)
    assert elsewhere.returncode == 1 and f"pair {kept} is not in project 'other'" in elsewhere.stderr
    assert "returned to the queue" in prefloop("flagged", "keep", "--project", "hh", "--pair", str(kept),
                                               "--admin", "root", db=sqlite_url).stdout
    assert "retired" in prefloop("flagged", "retire", "--project", "hh", "--pair", str(retired), "--admin", "root",
                                 db=sqlite_url).stdout
    twice = prefloop("flagged", "retire", "--project", "hh", "--pair", str(kept), "--admin", "root",
                     db=sqlite_url, check=False)
    assert twice.returncode == 1 and f"pair {kept} is not flagged (it is active)" in twice.stderr
    missing = prefloop("flagged", "keep", "--project", "hh", "--pair", "999999", "--admin", "root", db=sqlite_url,
                       check=False)
    assert missing.returncode == 1 and "no pair 999999" in missing.stderr  # not "not in project hh"
    assert "graphic" not in prefloop("flagged", "list", "--project", "hh", db=sqlite_url).stdout

    with database.session_scope(sqlite_url) as s:
        assert (s.get(Pair, kept).status, s.get(Pair, retired).status) == ("active", "retired")
        reviews = [e.actor_id for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "pair.review_flag"))]
    assert reviews == [ids["root"], ids["root"]]
    out = said(prefloop("export", str(Path(sqlite_url.removeprefix("sqlite:///")).parent / "hh.jsonl"),
                        "--project", "hh", db=sqlite_url))
    assert "1 flagged or retired" in out  # the retired pair; the kept one is back, not judged yet


def test_adjudicate_names_the_project_as_queue_does(sqlite_url):
    with database.session_scope(sqlite_url) as s:
        import_dataset(s, create_project(s, "hh"), [
            {"prompt": "q", "response_a": "a", "response_b": "b", "rater": r, "choice": c}
            for r, c in (("w1", 1), ("w2", -1))])
        create_project(s, "other")
        add_rater(s, "root", "pw", role="admin")
        pair = s.scalar(select(Pair.id))
    args = ("--pair", str(pair), "--choice", "B>A", "--admin", "root")
    elsewhere = prefloop("adjudicate", "--project", "other", *args, db=sqlite_url, check=False)
    assert elsewhere.returncode == 1 and f"pair {pair} is not in project 'other'" in elsewhere.stderr
    missing = prefloop("adjudicate", *args, db=sqlite_url, check=False)
    assert missing.returncode == 2 and "--project" in missing.stderr
    assert f"pair {pair} decided: B>A" in prefloop("adjudicate", "--project", "hh", *args, db=sqlite_url).stdout


def test_adjudicate_takes_a_label_or_its_number_and_says_the_label(sqlite_url):
    """--help names both spellings; `--choice -1` printed "decided: -1", not the direction it stands for."""
    with database.session_scope(sqlite_url) as s:
        import_dataset(s, create_project(s, "hh"), [
            {"prompt": "q", "response_a": "a", "response_b": "b", "rater": r, "choice": c}
            for r, c in (("w1", 1), ("w2", -1))])
        add_rater(s, "root", "pw", role="admin")
        pair = s.scalar(select(Pair.id))
    shown = said(prefloop("adjudicate", "--help", db=sqlite_url))
    assert "A>>B | A>B | tie | B>A | B>>A, or the same as a" in shown and "number from 2 to -2 (2 is A>>B)" in shown
    args = ("adjudicate", "--project", "hh", "--pair", str(pair), "--admin", "root")
    assert f"pair {pair} decided: B>A" in prefloop(*args, "--choice", "-1", db=sqlite_url).stdout
    wrong = prefloop(*args, "--choice", "7", db=sqlite_url, check=False)
    assert wrong.returncode == 1 and wrong.stderr.strip() == (
        "error: --choice '7': expected A>>B, A>B, tie, B>A, B>>A or a number from 2 to -2")


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_rubric_criterion_is_refused(tmp_path, blank):
    """The dashboard's rubric box skips blank lines; a --rubric value is one criterion, and an empty one a mistake."""
    db = f"sqlite:///{tmp_path / 'p.db'}"
    prefloop("init", db=db)
    result = prefloop("project", "create", "hh", "--rubric", "helpfulness", "--rubric", blank, db=db, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: --rubric {blank!r}: a criterion needs a name "
                                     "('name' or 'name: what it means')")
    assert "hh" not in prefloop("project", "list", db=db).stdout


def test_payroll_writes_its_table_with_out_as_quality_does(sqlite_url, tmp_path):
    with database.session_scope(sqlite_url) as s:
        create_project(s, "hh", ProjectSettings(pay_rate=20))
    prefloop("payroll", "--project", "hh", "--out", str(tmp_path / "pay.csv"), db=sqlite_url)
    assert (tmp_path / "pay.csv").read_text().startswith("rater")


def test_every_collection_command_shares_one_db_option():
    """One spelling and one help text of --db, in every command that opens the collection database."""
    import typer.main

    from apps.cli import app
    from collect.cli_options import DB_HELP

    def commands(group, path=()):
        for name, command in group.commands.items():
            yield path + (name,), command  # a group too: `align` trains from its own options
            if hasattr(command, "commands"):
                yield from commands(command, path + (name,))

    seen = []
    for path, command in commands(typer.main.get_command(app)):
        for param in command.params:
            if "--db" in getattr(param, "opts", []):
                seen.append(" ".join(path))
                assert (param.help, param.envvar) == (DB_HELP, "PREFLOOP_DB"), path
    assert {"init", "export", "rater update", "flagged keep", "quality leaderboard", "payroll", "generate",
            "align"} <= set(seen)


@pytest.mark.parametrize("args, message", [
    (["payroll", "--project", "hh", "--until", "garbage"],
     "error: --until 'garbage': not a date (input is too short); expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, in UTC"),
    (["payroll", "--project", "hh", "--since=2024-13-01"], "error: --since '2024-13-01': not a date (month value"),
    (["payroll", "--project", "hh", "--floor", "ten"], "error: --floor 'ten': not a number"),
    (["project", "create", "x", "--overlap", "three"], "error: --overlap 'three': not a whole number"),
    (["queue", "--project", "hh", "--split-below", "most"], "error: --split-below 'most': not a number"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_option(sqlite_url, args, message):
    """Not click's three-line usage box with exit 2: a bad value is a user error like any other."""
    result = prefloop(*args, db=sqlite_url, check=False)
    assert result.returncode == 1 and "Usage:" not in result.stderr
    assert " ".join(result.stderr.split()).startswith(message)


def test_project_list_and_status_say_no_pairs_for_a_new_project(sqlite_url):
    with database.session_scope(sqlite_url) as s:
        create_project(s, "fresh")
    assert "no pairs" in prefloop("project", "list", db=sqlite_url).stdout
    status = said(prefloop("status", db=sqlite_url))
    assert "no pairs" in status and "100%" not in status
    assert json.loads(prefloop("status", "--json", db=sqlite_url).stdout)[0]["progress"] is None


def test_empty_lists_say_there_is_nothing_instead_of_an_empty_table(sqlite_url, tmp_path):
    """queue, flagged list, payroll, quality raters --flagged and project list: one line, not headers alone."""
    for command in (("project", "list"), ("status",)):
        assert said(prefloop(*command, db=sqlite_url)) == (
            "no projects yet: create one with `prefloop project create NAME`")
    with database.session_scope(sqlite_url) as s:
        import_dataset(s, create_project(s, "hh"), [
            {"prompt": "q", "response_a": "a", "response_b": "b", "rater": r, "choice": 1} for r in ("w1", "w2")])
    assert said(prefloop("queue", "--project", "hh", db=sqlite_url)) == "disagreements: hh: nothing to adjudicate"
    assert said(prefloop("flagged", "list", "--project", "hh", db=sqlite_url)) == "flagged: hh: nothing to review"
    assert said(prefloop("payroll", "--project", "hh", db=sqlite_url)) == (
        "payroll: hh: nothing to pay (no rater has worked on it yet)")  # imported judgments are not paid work
    assert said(prefloop("quality", "raters", "--project", "hh", "--flagged", "--out", str(tmp_path / "r.csv"),
                         db=sqlite_url)) == "Raters: hh: nothing flagged (no rater has a flag)"
    assert (tmp_path / "r.csv").read_text().startswith("rater_id,rater,")


def test_db_before_the_command_is_the_database_of_the_run(sqlite_url, tmp_path, monkeypatch, capsys):
    """`prefloop --db URL status` was "No such option: --db": given before the command, --db is PREFLOOP_DB for
    that run (a --db after the command still wins), and the environment is left as it was."""
    with database.session_scope(sqlite_url) as s:
        create_project(s, "before")
    monkeypatch.delenv("PREFLOOP_DB", raising=False)
    run_cli("--db", sqlite_url, "project", "list", monkeypatch=monkeypatch)
    assert "before" in capsys.readouterr().out and "PREFLOOP_DB" not in os.environ
    missing = tmp_path / "other.db"
    result = subprocess.run([sys.executable, "-m", "apps.cli", "--db", sqlite_url, "status", "--db",
                             f"sqlite:///{missing}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if not k.startswith("PREFLOOP_")})
    assert result.returncode == 1 and f"no prefloop database at sqlite:///{missing}" in said_err(result)


def said_err(result: subprocess.CompletedProcess) -> str:
    return " ".join(result.stderr.split())


def test_project_update_changes_only_the_settings_given_and_records_who(sqlite_url, tmp_path):
    """`prefloop project update` does what collect.projects.update_project does, as an admin, audited."""
    prefloop("init", "--admin", "root", "--password", "s3cret", db=sqlite_url)
    prefloop("project", "create", "hh", "--overlap", "3", "--rubric", "helpful", db=sqlite_url)
    guidelines = tmp_path / "g.md"
    guidelines.write_text("Prefer the honest answer.")
    result = prefloop("project", "update", "hh", "--admin", "root", "--overlap", "5", "--rubric", "honest: no lies",
                      "--guidelines", str(guidelines), db=sqlite_url)
    assert said(result) == "project 'hh' updated: guidelines, overlap, rubric"
    with database.session_scope(sqlite_url) as s:
        project = get_project(s, "hh")
        assert (project.overlap, project.rubric, project.guidelines) == (
            5, [{"name": "honest", "description": "no lies"}], "Prefer the honest answer.")
        assert project.pay_rate == 0.0 and project.lease_seconds == 900  # not given: unchanged
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "project.update"))
        assert event.details["changes"]["overlap"] == 5 and event.actor_id == get_rater(s, "root").id
    unchanged = prefloop("project", "update", "hh", "--admin", "root", "--overlap", "5", db=sqlite_url)
    assert said(unchanged) == "project 'hh' already has those settings: nothing changed"
    for args, expected in ((["--admin", "root"], "nothing to change"),
                           (["--admin", "root", "--overlap", "0"], "overlap"),
                           (["--admin", "nobody", "--overlap", "4"], "nobody")):
        refused = prefloop("project", "update", "hh", *args, db=sqlite_url, check=False)
        assert refused.returncode == 1 and expected in said_err(refused), said_err(refused)
    with database.session_scope(sqlite_url) as s:
        assert get_project(s, "hh").overlap == 5

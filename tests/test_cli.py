"""The `prefloop` command: the same flow as the Python API, one clear line for every user error."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
from rich.console import Console
from rich.text import Text

from sqlalchemy import func, select

from collect import db as database
from collect.ingest import import_dataset
from collect.models import Pair
from collect.projects import create_project
from tests.conftest import REPO
from tests.postgres import free_port


def prefloop(*args: str, db: str, check: bool = True) -> subprocess.CompletedProcess:
    # No PREFLOOP_* settings from the caller's shell; a new session has no terminal, so a password prompt
    # reads the (empty) stdin instead of /dev/tty.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLOOP_")}
    result = subprocess.run([sys.executable, "-m", "apps.cli", *args, "--db", db], cwd=REPO, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=300, env=env, start_new_session=True)
    if check and result.returncode != 0:
        raise AssertionError(f"prefloop {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_the_whole_collection_flow(tmp_path, data_dir):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    prefloop("init", "--admin", "root", "--password", "s3cret", db=db)
    prefloop("project", "create", "hh", "--overlap", "3", "--rubric", "helpfulness,harmlessness", db=db)
    prefloop("rater", "add", "alice", "--password", "pw", "--project", "hh", "--expertise", "domain:medicine", db=db)
    out = prefloop("import", str(data_dir / "hh_harmless_base_test.jsonl.gz"), "--project", "hh", db=db).stdout
    assert "2312 pairs" in out
    status = json.loads(prefloop("status", "--project", "hh", "--json", db=db).stdout)[0]
    assert (status["pairs"], status["judgments"], status["raters"]) == (2312, 2312, 1)
    assert status["judgments_needed"] == 2312 * 2
    out = prefloop("export", str(tmp_path / "hh.parquet"), "--project", "hh", db=db).stdout
    assert "exported 2312 preference pairs" in out
    raters = prefloop("rater", "list", db=db).stdout
    assert "alice" in raters and "root" in raters
    assert "hh" in prefloop("project", "list", db=db).stdout


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
    assert "name" in prefloop("project", "list", db=url).stdout  # the made file is the database it reads


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

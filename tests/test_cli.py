"""The `prefloop` command: the same flow as the Python API, one clear line for every user error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def prefloop(*args: str, db: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "apps.cli", *args, "--db", db], cwd=REPO, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=300)
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
    missing = prefloop("import", str(tmp_path / "nope.jsonl"), "--project", "p", db=db, check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    dup = prefloop("project", "create", "p", db=db, check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr

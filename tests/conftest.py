"""Shared fixtures: a fresh database on SQLite and on a real PostgreSQL server started on loopback."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from hypothesis import settings

from tests.postgres import free_port, new_database, postgres_bindir, throwaway_postgres  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# CI (.ci/run) tries the same fuzzed examples on every run, so a change lands or fails on its own merits; runs
# elsewhere draw new examples each time and keep failing ones in .hypothesis/ to replay.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"the shared data folder {DATA} is missing")
    return DATA


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields a URL prefix without the database name."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): skipping the PostgreSQL half")
    with throwaway_postgres() as prefix:
        yield prefix


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A migrated, empty prefloop database: the same tests run on SQLite and on PostgreSQL."""
    from collect import db

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'prefloop.db'}"
    else:
        url = new_database(request.getfixturevalue("postgres_server"))
    db.upgrade(url)
    yield url
    db.get_engine(url).dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    from collect import db

    url = f"sqlite:///{tmp_path / 'prefloop.db'}"
    db.upgrade(url)
    yield url
    db.get_engine(url).dispose()


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")

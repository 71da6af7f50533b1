"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests and benchmarks (Debian's postgresql package)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_postgres(durable: bool = False) -> Iterator[str]:
    """Start a cluster, yield its URL prefix (add "/<database>"), stop and delete it afterwards.

    durable=False turns fsync off: fine for tests, wrong for numbers about durability.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="prefloop-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_postgres + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                  "--no-sync"], check=True, capture_output=True)
    # free_port's port is free only until another process binds it, so a start that fails is retried on a new one.
    for attempt in range(3):
        port = free_port()
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off"
        started = subprocess.run(as_postgres + [str(bindir / "pg_ctl"), "-D", str(data), "-o", options,
                                                "-l", str(root / "log"), "-w", "start"], capture_output=True)
        if started.returncode == 0:
            break
        if attempt == 2:
            log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')}{log[-2000:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_postgres + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_database(prefix: str) -> str:
    """Create an empty database on the server at `prefix`; returns its SQLAlchemy URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(prefix.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"{prefix}/{name}"

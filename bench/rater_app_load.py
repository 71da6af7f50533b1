"""Load test of `prefloop serve`: simulated raters over HTTP, on SQLite and on PostgreSQL.

Each simulated rater logs in, then loops: get the next pair, think, submit a judgment. Two client paths:
- `gradio`: the rater app's own Gradio events (login cookie, session hash; submit is one POST to
  /gradio_api/run/predict), exactly what the browser sends (apps.rater_client.GradioRaterClient);
- `json`: the JSON API for programmatic raters (/api/v1, HTTP Basic; apps.rater_client.RaterClient).
Latency is measured per operation at the client (request sent to answer parsed). Afterwards every judgment
the server acknowledged is looked up in the database: lost (acknowledged, missing) and duplicated (a pair
judged twice by one rater, more than k judgments on a pair, or two judgments for one assignment) must be 0.

The server and the load generator share the machine's cores, so numbers are pessimistic for the server.
The pairs are the 2,312 HH-RLHF harmless-base test pairs (../shared/data/hh_harmless_base_test.jsonl.gz),
imported without their labels.

    .venv/bin/python bench/rater_app_load.py                  # the full run: 50 raters, 60 s, both backends
    .venv/bin/python bench/rater_app_load.py --seconds 10 --backends sqlite --paths json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import machine  # noqa: E402  (bench/common.py: one description of the machine)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from sqlalchemy import select  # noqa: E402

from apps.rater_client import GradioRaterClient, RaterClient  # noqa: E402
from collect import db  # noqa: E402
from collect.auth import hash_password  # noqa: E402
from collect.formats import read_records  # noqa: E402
from collect.ingest import import_dataset, import_records  # noqa: E402
from collect.models import Judgment, Pair  # noqa: E402
from collect.projects import ProjectSettings, add_rater, create_project  # noqa: E402
from tests.browser import start_server, stop_server  # noqa: E402
from tests.postgres import free_port, new_database, postgres_bindir, throwaway_postgres  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "hh_harmless_base_test.jsonl.gz"
OVERLAP = 3
CRITERIA = ["helpfulness", "harmlessness"]
N_CRITERIA_SLOTS = 8  # apps.rater_app.MAX_CRITERIA: the Gradio submit event takes one value per slot


@dataclass
class Stats:
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)  # assignment ids the server said it stored
    errors: list[str] = field(default_factory=list)
    exhausted: int = 0


def build_database(url: str, n_raters: int, rows: list[dict] | None = None, overlap: int = OVERLAP,
                   lease_seconds: int = 600) -> int:
    """A migrated database with one project and raters rater0..rater{n-1} (password "pw"); the project id.

    rows: pairs in collect's generic format; by default the HH-RLHF pairs without their labels.
    """
    db.upgrade(url)
    with db.session_scope(url) as session:
        project = create_project(session, "load", ProjectSettings(
            overlap=overlap, rubric=[{"name": c} for c in CRITERIA], lease_seconds=lease_seconds))
        if rows is None:
            records = read_records(DATA, "hh-rlhf")
            for r in records:
                r.judgments = []  # the pairs only: the crowd labels would fill the overlap
            import_records(session, project, records)
        else:
            import_dataset(session, project, rows)
        password_hash = hash_password("pw")  # once: Argon2 is slow on purpose
        for i in range(n_raters):
            add_rater(session, f"rater{i}", projects=[project]).password_hash = password_hash
        return project.id


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def rater_loop(path: str, base_url: str, name: str, project_id: int, clock: dict, think: float,
               start: threading.Barrier, stats: Stats, lock: threading.Lock) -> None:
    """One simulated rater: log in, wait for everyone, then next pair / think / submit until clock["deadline"]."""
    rng = random.Random(name)
    local = Stats()
    pause = (lambda: time.sleep(rng.expovariate(1 / think))) if think > 0 else (lambda: None)
    try:
        if path == "json":
            client = RaterClient(base_url, name, "pw")
            client.projects()  # pays the Argon2 check once, before the clock starts
        else:
            client = GradioRaterClient(base_url, name, "pw")
            on_screen = client.call("load")[-1]  # the page load serves the first pair
        start.wait(timeout=600)
        if think > 0:
            time.sleep(rng.uniform(0, think))  # raters do not all start on the same millisecond
        while time.monotonic() < clock["deadline"]:
            if path == "json":
                t0 = time.perf_counter()
                item = client.next(project_id)
                local.next_ms.append((time.perf_counter() - t0) * 1000)
                assignment_id = item and item["assignment_id"]
            else:
                # As in the browser: there is no separate "next" request, the submission answers with the next pair.
                assignment_id = int(on_screen) if on_screen else None
            if assignment_id is None:
                local.exhausted += 1
                break
            pause()
            choice = rng.choice([2, 1, 0, -1, -2])
            criteria = {c: rng.choice([2, 1, 0, -1, -2]) for c in CRITERIA}
            t0 = time.perf_counter()
            if path == "json":
                client.submit(assignment_id, choice, criteria=criteria, client_token=uuid.uuid4().hex)
            else:
                values = list(criteria.values()) + [None] * (N_CRITERIA_SLOTS - len(CRITERIA))
                on_screen = client.call("submit", None, str(assignment_id), choice, False, "", "", *values)[-1]
            local.submit_ms.append((time.perf_counter() - t0) * 1000)
            local.acknowledged.append(assignment_id)
    except Exception as e:  # noqa: BLE001 - counted and reported in the table
        local.errors.append(f"{name}: {type(e).__name__}: {e}"[:300])
    finally:
        with lock:
            stats.next_ms += local.next_ms
            stats.submit_ms += local.submit_ms
            stats.acknowledged += local.acknowledged
            stats.errors += local.errors
            stats.exhausted += local.exhausted


def check_database(url: str, project_id: int, acknowledged: list[int]) -> dict[str, int]:
    with db.session_scope(url) as session:
        rows = session.execute(select(Judgment.assignment_id, Judgment.pair_id, Judgment.rater_id)
                               .where(Judgment.project_id == project_id, Judgment.kind == "rater")).all()
        over = sum(1 for n in session.scalars(select(Pair.n_claimed).where(Pair.project_id == project_id))
                   if n > OVERLAP)
    stored = Counter(a for a, _, _ in rows)
    per_pair = Counter(p for _, p, _ in rows)
    return {
        "judgments": len(rows),
        "lost": len(set(acknowledged) - set(stored)),
        "duplicated": (sum(n - 1 for n in stored.values() if n > 1)
                       + sum(n - 1 for n in Counter((p, r) for _, p, r in rows).values() if n > 1)
                       + sum(n - OVERLAP for n in per_pair.values() if n > OVERLAP) + over),
        "unacknowledged": len(set(stored) - set(acknowledged)),
    }


def run_raters(base_url: str, project_id: int, paths: list[str], seconds: float = float("inf"),
               think: float = 0.0, on_start=None) -> tuple[Stats, float]:
    """Simulated raters rater0.. (one per entry of `paths`: "json" or "gradio") against a running server.

    All log in before the clock starts; they stop after `seconds`, when no work is left, or at their first
    error (say, the server was killed). `on_start()` runs when the clock starts. Returns (stats, elapsed s).
    """
    stats, lock = Stats(), threading.Lock()
    barrier = threading.Barrier(len(paths) + 1)
    clock = {"deadline": float("inf")}
    threads = [threading.Thread(target=rater_loop, args=(path, base_url, f"rater{i}", project_id, clock, think,
                                                         barrier, stats, lock), daemon=True)
               for i, path in enumerate(paths)]
    for t in threads:
        t.start()
    barrier.wait(timeout=600)  # every rater is logged in: the clock starts now
    started = time.monotonic()
    clock["deadline"] = started + seconds
    if on_start is not None:
        on_start()
    for t in threads:
        t.join(timeout=None if seconds == float("inf") else seconds + 120)
    return stats, time.monotonic() - started


def run_one(backend: str, url: str, path: str, raters: int, seconds: float, think: float, workdir: Path) -> dict:
    project_id = build_database(url, raters)
    server = start_server(url, free_port(), log_path=workdir / f"server-{backend}-{path}-{think}.log")
    try:
        cpu = {}
        stats, elapsed = run_raters(
            server.base_url, project_id, [path] * raters, seconds, think,
            on_start=lambda: cpu.update(client=time.process_time(), server=_cpu_seconds(server.pid)))
        client_cpu, server_cpu = time.process_time() - cpu["client"], _cpu_seconds(server.pid) - cpu["server"]
    finally:
        stop_server(server)
    checked = check_database(url, project_id, stats.acknowledged)
    return {
        "backend": backend, "path": path, "raters": raters, "think_s": think, "seconds": round(elapsed, 1),
        "next_p50": percentile(stats.next_ms, 50), "next_p95": percentile(stats.next_ms, 95),
        "next_p99": percentile(stats.next_ms, 99), "submit_p50": percentile(stats.submit_ms, 50),
        "submit_p95": percentile(stats.submit_ms, 95), "submit_p99": percentile(stats.submit_ms, 99),
        "judgments_per_s": len(stats.acknowledged) / elapsed, "acknowledged": len(stats.acknowledged),
        "errors": len(stats.errors), "error_examples": stats.errors[:3], "exhausted": stats.exhausted,
        "server_cpu": server_cpu / elapsed, "client_cpu": client_cpu / elapsed, **checked,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(rows: list[dict]) -> str:
    head = ("| backend | client path | think (s) | next p50 / p95 / p99 (ms) | submit p50 / p95 / p99 (ms) "
            "| judgments/s | acknowledged | lost | duplicated | errors | p95 < 50 ms |")
    lines = [head, "|---" * 11 + "|"]
    for r in rows:
        p95 = max(r["next_p95"], r["submit_p95"]) if r["path"] == "json" else r["submit_p95"]
        ok = "yes" if p95 < 50 else "no"
        nxt = (f"{r['next_p50']:.1f} / {r['next_p95']:.1f} / {r['next_p99']:.1f}" if r["path"] == "json"
               else "in submit")
        lines.append(
            f"| {r['backend']} | {r['path']} | {r['think_s']:g} | {nxt} | "
            f"{r['submit_p50']:.1f} / {r['submit_p95']:.1f} / {r['submit_p99']:.1f} | "
            f"{r['judgments_per_s']:.1f} | {r['acknowledged']} | {r['lost']} | {r['duplicated']} | {r['errors']} | {ok} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--paths", default="gradio,json")
    parser.add_argument("--think", default="10,1,0",
                        help="mean think time between steps, seconds (comma-separated runs); 0 = flat out")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rater_app_load.md")
    args = parser.parse_args()
    command = "python bench/rater_app_load.py " + " ".join(sys.argv[1:])
    where = machine()  # now: it records the load before the run
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="prefloop-bench-"))
    thinks = [float(t) for t in args.think.split(",")]
    try:
        for backend in args.backends.split(","):
            with contextlib.ExitStack() as stack:
                # Durable PostgreSQL (fsync on): an acknowledged judgment must survive a crash there too.
                prefix = stack.enter_context(throwaway_postgres(durable=True)) if backend == "postgres" else None
                for think in thinks:
                    for path in args.paths.split(","):
                        url = new_database(prefix) if prefix else f"sqlite:///{workdir / f'{path}-{think}.db'}"
                        print(f"== {backend} / {path} / think {think:g} s: {args.raters} raters for "
                              f"{args.seconds:g} s", flush=True)
                        row = run_one(backend, url, path, args.raters, args.seconds, think, workdir)
                        db.get_engine(url).dispose()
                        print(table([row]).splitlines()[-1], flush=True)
                        for e in row["error_examples"]:
                            print("   error:", e)
                        print(f"   CPU cores busy: server {row['server_cpu']:.2f}, load generator {row['client_cpu']:.2f}")
                        rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = table(rows)
    print(result)
    text = f"""# Rater app under load

{args.raters} simulated raters at once against one `prefloop serve` process for {args.seconds:g} s per row.
Each rater loops: next pair, think, submit a judgment (5-point choice plus two rubric criteria), think.
Think time (per step, twice per judgment) is exponential with the mean shown: 10 s stands for fast expert
raters (comparing two long answers takes a person 30 s and more), 1 s is a stress test, and 0 means flat
out (a saturation test: 50 raters flat out stand for thousands of real ones).
Client paths: `gradio` = the rater app's Gradio events as the browser sends them (the page load through
Gradio's queue; submit, which also serves the next pair, as one POST to /gradio_api/run/predict); `json` = the JSON API (/api/v1) for programmatic raters.
Latency is measured at the client, which runs on the same machine as the server and the database.
Lost = acknowledged but not in the database; duplicated = a second judgment for an assignment, a pair
judged twice by one rater, or a pair over its overlap (k = {OVERLAP}). Target: p95 < 50 ms for both operations.

- Machine: {where}
- Date: {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
- Command: `{command}`
- Data: HH-RLHF harmless-base test pairs (../shared/data/hh_harmless_base_test.jsonl.gz), labels dropped
- SQLite: WAL, synchronous=FULL; PostgreSQL {_pg_version()}: fsync on, one local cluster

{result}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


def _pg_version() -> str:
    bindir = postgres_bindir()
    return bindir.parent.name if bindir else "(not installed)"


if __name__ == "__main__":
    main()

"""Import and export speed for each shared data file, on SQLite and on PostgreSQL.

    .venv/bin/python bench/import_export.py [--no-postgres]

Import = parse + check + write in one transaction (what `prefloop import` does); export = aggregate
(majority) + write Parquet (what `prefloop export` does). Rows are the file's records (judgment rows
for summarize, pairs for the others).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine  # noqa: E402  (bench/common.py: one description of the machine)

from collect import db  # noqa: E402
from collect.export import export_project  # noqa: E402
from collect.formats import read_records  # noqa: E402
from collect.ingest import import_records  # noqa: E402
from collect.projects import create_project  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
FILES = [
    "hh_harmless_base_test.jsonl.gz",
    "summarize_feedback_batch13.jsonl",
    "finegrained_qa_dev_feedback.json",
] + sorted(f"alpaca_eval/{p.name}" for p in (DATA / "alpaca_eval").glob("*.annotations.json"))


def measure(url: str, path: Path, workdir: Path) -> dict[str, float]:
    db.upgrade(url)
    start = time.perf_counter()
    records = read_records(path)
    with db.session_scope(url) as session:
        project = create_project(session, path.name)
        import_records(session, project, records)
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    with db.session_scope(url) as session:
        result = export_project(session, project, workdir / f"{path.stem}.parquet")
    export_s = time.perf_counter() - start
    db.get_engine(url).dispose()
    return {"rows": len(records), "import_s": import_s, "import_rps": len(records) / import_s,
            "exported": result.rows, "export_s": export_s, "export_rps": result.rows / export_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    backends = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for backend in backends:
            if backend == "postgresql":
                from tests.postgres import new_database, throwaway_postgres

                server = throwaway_postgres(durable=True)
                prefix = server.__enter__()
            for name in FILES:
                url = (f"sqlite:///{workdir / (name.replace('/', '_') + '.db')}" if backend == "sqlite"
                       else new_database(prefix))
                r = measure(url, DATA / name, workdir)
                rows.append((backend, name, r))
                print(f"{backend:10} {name:42} import {r['rows']:5} rows in {r['import_s']:.2f} s "
                      f"({r['import_rps']:,.0f}/s)  export {r['exported']:5} in {r['export_s']:.2f} s "
                      f"({r['export_rps']:,.0f}/s)", flush=True)
            if backend == "postgresql":
                server.__exit__(None, None, None)

    table = ["| database | file | rows | import s | import rows/s | exported pairs | export s | export rows/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for backend, name, r in rows:
        table.append(f"| {backend} | {name} | {r['rows']:,} | {r['import_s']:.2f} | {r['import_rps']:,.0f} | "
                     f"{r['exported']:,} | {r['export_s']:.2f} | {r['export_rps']:,.0f} |")
    text = "\n".join([
        "# Import and export speed",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `{' '.join(['.venv/bin/python', 'bench/import_export.py', *sys.argv[1:]])}`",
        "- import: parse, check and write in one transaction; export: majority aggregation + Parquet.",
        "- SQLite in WAL mode with synchronous=FULL; PostgreSQL with fsync on (a durable server).",
        "",
        *table,
        "",
    ])
    out = Path(__file__).resolve().parent / "results" / "import_export.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print()
    print("\n".join(table))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()

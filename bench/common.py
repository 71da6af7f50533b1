"""What every benchmark reports about where it ran."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> str:
    """Cores, CPU model, RAM, any NVIDIA GPU, OS, Python, and the load when the benchmark started (other work
    skews timings)."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GiB RAM{gpus()}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; load average at start {load}")


def gpus() -> str:
    """", 1 GPU (NVIDIA H200, 143771 MiB)" from nvidia-smi; "" on a machine without one (asking torch would import it
    into every benchmark)."""
    if not shutil.which("nvidia-smi"):
        return ""
    # The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (nvidia-smi itself ignores it).
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        run = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader",
                              *(["--id=" + visible] if visible else [])], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:  # a hung driver must not hang the benchmark
        return ", GPU: nvidia-smi did not answer"
    found = [line.strip() for line in run.stdout.splitlines() if line.strip()]
    if run.returncode != 0 or not found:
        return ""
    return f", {len(found)} GPU{'s' if len(found) > 1 else ''} ({'; '.join(sorted(set(found)))})"


def peak_rss_gb() -> float:
    """This process's own peak resident memory (VmHWM). Not `ru_maxrss`, which a child started by subprocess
    inherits from its parent across exec: a worker would report its parent's peak if that was higher."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    import resource  # no /proc (not Linux): the rusage figure

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def command() -> str:
    """The command line that ran this benchmark, as a user would type it."""
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def results_file(out: str | None, quick: bool, results: Path, work: Path) -> Path:
    """Where a benchmark writes its table: `--out` when given; else a smoke run (`--quick`) writes into its work
    folder, so it never replaces a full run's results; else `results` (bench/results/NAME.md)."""
    return Path(out) if out else (Path(work) / results.name if quick else results)


def chosen(parser, option: str, given: str, known) -> list[str]:
    """The comma-separated names given to `option`; an argparse error naming any that are not in `known`."""
    names = given.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def write_report(report: str, out: str | None, quick: bool, results: Path, work: Path) -> Path:
    """Print a benchmark's Markdown report and write it where `results_file` says; the path written."""
    print(report)
    path = results_file(out, quick, results, work)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    print(f"wrote {path}")
    return path

"""Running a script under two CPU ranks, as the data-parallel tests do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run_ranks(command: list[str], doing: str, timeout: float = 300) -> str:
    """Run `command` (a launcher, its script and arguments) to its end and return its stderr; fail the test if it
    fails. It runs in a process group of its own, so that a hang (one rank waiting on another forever, the failure
    these tests exist for) is killed with its ranks; `doing` names what a rank stopped alone."""
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
        pytest.fail(f"the ranks did not finish within {timeout:.0f} s: one stopped {doing} while the other waited on it")
    assert run.returncode == 0, stderr[-3000:]
    return stderr

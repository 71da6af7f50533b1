"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable


class UserError(Exception):
    """Bad input or a bad request: the message names the file, line or field at fault."""


class PermissionDenied(UserError):
    """The caller may not touch this project, pair or assignment."""


def first_line(error: Exception) -> str:
    """An exception's message cut to one line, for a UserError that quotes it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_settings(owner: Any, checks: Iterable[tuple[str, bool, str]]) -> None:
    """UserError for the first (field, ok, expected) whose value is not ok, naming the field as Python and the CLI
    spell it: "temperature (--temperature) must be above 0, got 0.0"."""
    for name, ok, expected in checks:
        if not ok:
            raise UserError(f"{name} (--{name.replace('_', '-')}) must be {expected}, got {getattr(owner, name)}")


def check_seed(seed: int, name: str = "seed (--seed)") -> None:
    """UserError unless `seed` is one numpy and torch take (0 to 2**32 - 1): checked before anything loads or
    samples, where numpy would refuse it only at the end."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"{name} must be between 0 and 2**32 - 1, got {seed!r}")


class PrefloopWarning(UserWarning):
    """What prefloop warns about (data it reads other than its author may mean, settings it does not use): one
    category to filter, `warnings.filterwarnings("ignore", category=PrefloopWarning)`."""


_OWN_CODE = tuple(os.path.join(os.path.realpath(Path(__file__).parent.parent), package) + os.sep
                  for package in ("apps", "collect", "finetune", "reward"))


def warn(message: str) -> None:
    """A PrefloopWarning attributed to the first caller outside prefloop's own packages (the user's script or
    notebook line), wherever in prefloop it is raised: a fixed `stacklevel` points inside prefloop as soon as the
    call that warns is reached by another path (`score_file` through `RewardScorer.score`, say). Paths are compared
    resolved, so a symlinked checkout is still prefloop's own."""
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and os.path.realpath(frame.f_code.co_filename).startswith(_OWN_CODE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, PrefloopWarning, stacklevel=level)

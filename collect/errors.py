"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

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

"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a bad request: the message names the file, line or field at fault."""


class PermissionDenied(UserError):
    """The caller may not touch this project, pair or assignment."""


def first_line(error: Exception) -> str:
    """An exception's message cut to one line, for a UserError that quotes it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

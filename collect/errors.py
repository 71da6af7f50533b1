"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a bad request: the message names the file, line or field at fault."""


class PermissionDenied(UserError):
    """The caller may not touch this project, pair or assignment."""

"""Passwords, hashed with Argon2id (memory-hard), and the audit log."""

from __future__ import annotations

from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session

from collect.models import AuditEvent, Rater

# 64 MiB, 3 passes: OWASP's Argon2id baseline; ~50 ms a login on one core.
_hasher = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=1)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(rater: Rater, password: str) -> bool:
    if not rater.password_hash or rater.external:
        return False
    try:
        return _hasher.verify(rater.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def audit(
    session: Session,
    action: str,
    actor_id: int | None = None,
    project_id: int | None = None,
    **details: Any,
) -> None:
    session.add(AuditEvent(action=action, actor_id=actor_id, project_id=project_id, details=details))

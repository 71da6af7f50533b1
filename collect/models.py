"""The collection database: SQLAlchemy 2 models. Alembic migrations in collect/migrations mirror them.

Judgment choices are stored relative to the pair's A and B, never relative to the screen:
+2 A>>B, +1 A>B, 0 tie, -1 B>A, -2 B>>A. `left_is_a` records which side A was shown on.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "rater", "viewer")
ROUTING = ("any", "experts_first", "experts_only")
CHOICES = {2: "A>>B", 1: "A>B", 0: "tie", -1: "B>A", -2: "B>>A"}
RATER_KINDS = ("rater", "repeat")
"""Judgment kinds a rater makes in the app: both are paid work and count in the rater's own numbers."""
VOTE_KINDS = ("rater", "import")
"""Judgment kinds that are votes: what aggregation and export read, and, on a pair that is not gold, what fills its
overlap. A repeat is a consistency check and an adjudication an admin's ruling: neither is a vote."""


MAX_ID = 2**31 - 1
"""The largest id a row can have: ids are PostgreSQL `integer`s (SQLite's go to 2**63 - 1). A larger number from a
caller names no row, and a query binding it fails on PostgreSQL (numeric value out of range) or in the driver."""


def is_row_id(value: Any) -> bool:
    """Whether `value` can be the id of a row: an int (not a bool) from 1 to MAX_ID."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    guidelines: Mapped[str] = mapped_column(Text, default="")
    # [{"name": "helpfulness", "description": "...", "scale": 5}, ...]
    rubric: Mapped[list[Any]] = mapped_column(JSON, default=list)
    overlap: Mapped[int] = mapped_column(Integer, default=3)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    pay_rate: Mapped[float] = mapped_column(Float, default=0.0)  # currency units per active hour
    currency: Mapped[str] = mapped_column(String(8), default="USD")
    lease_seconds: Mapped[int] = mapped_column(Integer, default=900)
    routing: Mapped[str] = mapped_column(String(20), default="experts_first")
    sensitive_daily_cap: Mapped[int] = mapped_column(Integer, default=20)
    break_after_minutes: Mapped[int] = mapped_column(Integer, default=50)
    idle_seconds: Mapped[int] = mapped_column(Integer, default=120)
    repeat_rate: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Rater(Base):
    __tablename__ = "rater"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(10), default="rater")
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    expertise: Mapped[list[Any]] = mapped_column(JSON, default=list)  # ["domain:medicine", ...]
    sensitive_opt_in: Mapped[list[Any]] = mapped_column(JSON, default=list)  # ["violence", ...]
    # Raters that exist only in imported data (e.g. summarize-from-feedback workers) cannot log in.
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "membership"
    __table_args__ = (UniqueConstraint("project_id", "rater_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("rater.id", ondelete="CASCADE"))


class Prompt(Base):
    __tablename__ = "prompt"
    __table_args__ = (UniqueConstraint("project_id", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    conversation: Mapped[list[Any]] = mapped_column(JSON)  # [{"role": "user", "content": "..."}, ...]
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)  # ["domain:law", "sensitive:violence"]
    # Copied from the tags so that assignment can filter in SQL: sorted sensitive categories joined by
    # commas ("" when none), and the prompt's domain ("" when none; the first domain tag wins).
    sensitive: Mapped[str] = mapped_column(String(200), default="")
    domain: Mapped[str] = mapped_column(String(100), default="")
    source: Mapped[str] = mapped_column(String(200), default="")
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Response(Base):
    __tablename__ = "response"
    __table_args__ = (UniqueConstraint("prompt_id", "model", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(200), default="")
    content: Mapped[str] = mapped_column(Text)
    generation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Pair(Base):
    __tablename__ = "pair"
    __table_args__ = (
        UniqueConstraint("project_id", "response_a_id", "response_b_id"),
        Index("ix_pair_queue", "project_id", "status", "n_claimed"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id", ondelete="CASCADE"), index=True)
    response_a_id: Mapped[int] = mapped_column(ForeignKey("response.id", ondelete="CASCADE"))
    response_b_id: Mapped[int] = mapped_column(ForeignKey("response.id", ondelete="CASCADE"))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_choice: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # active: in the queue; flagged: pulled by a rater's harm flag, awaiting admin review; retired: done with.
    status: Mapped[str] = mapped_column(String(10), default="active")
    # Open assignments plus submitted judgments: the overlap cap is enforced on this counter
    # with a conditional UPDATE, so two servers can never both take the last slot.
    n_claimed: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(200), default="")
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    prompt: Mapped[Prompt] = relationship(lazy="joined", innerjoin=True)
    response_a: Mapped[Response] = relationship(foreign_keys=[response_a_id], lazy="joined", innerjoin=True)
    response_b: Mapped[Response] = relationship(foreign_keys=[response_b_id], lazy="joined", innerjoin=True)


class Assignment(Base):
    __tablename__ = "assignment"
    # One row per (pair, rater), plus at most one repeat of it (is_repeat: served again with the sides swapped,
    # to measure the rater's consistency): the database itself forbids serving a pair twice otherwise.
    __table_args__ = (
        UniqueConstraint("pair_id", "rater_id", "is_repeat", name="uq_assignment_pair_rater_repeat"),
        Index("ix_assignment_rater_status", "rater_id", "status"),
        Index("ix_assignment_status_lease", "status", "lease_expires_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    pair_id: Mapped[int] = mapped_column(ForeignKey("pair.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("rater.id", ondelete="CASCADE"))
    served_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    left_is_a: Mapped[bool] = mapped_column(Boolean)
    lease_expires_at: Mapped[datetime] = mapped_column(DateTime)
    # open -> submitted | skipped | expired; undo turns submitted back into open.
    status: Mapped[str] = mapped_column(String(10), default="open")
    skip_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    active_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    last_activity_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revealed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # A repeat takes no overlap slot and its judgment (kind "repeat") stays out of aggregation and export.
    is_repeat: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    pair: Mapped[Pair] = relationship(lazy="joined", innerjoin=True)


class Judgment(Base):
    __tablename__ = "judgment"
    __table_args__ = (
        UniqueConstraint("rater_id", "client_token"),
        UniqueConstraint("project_id", "external_key"),
        Index("ix_judgment_pair", "pair_id"),
        # SQLite: never reuse the id of a deleted (undone) judgment; clients hold judgment ids (migration 0004).
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pair.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("rater.id", ondelete="CASCADE"))
    assignment_id: Mapped[int | None] = mapped_column(
        ForeignKey("assignment.id", ondelete="SET NULL"), nullable=True, unique=True
    )
    choice: Mapped[int] = mapped_column(Integer)  # +2 A>>B ... -2 B>>A
    left_is_a: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    both_bad: Mapped[bool] = mapped_column(Boolean, default=False)
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    rationale: Mapped[str] = mapped_column(Text, default="")
    rewrite: Mapped[str | None] = mapped_column(Text, nullable=True)
    active_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # rater: from the app; repeat: from the app, on a pair the rater judged before (sides swapped), kept for
    # consistency checks only; import: from a file; adjudication: an admin's decision on a disputed pair.
    kind: Mapped[str] = mapped_column(String(12), default="rater")
    client_token: Mapped[str | None] = mapped_column(String(100), nullable=True)
    external_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)  # imported rater confidence


class AuditEvent(Base):
    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("rater.id", ondelete="SET NULL"), nullable=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), nullable=True, index=True
    )
    action: Mapped[str] = mapped_column(String(100))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ImportRun(Base):
    __tablename__ = "import_run"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(40))
    sha256: Mapped[str] = mapped_column(String(64))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

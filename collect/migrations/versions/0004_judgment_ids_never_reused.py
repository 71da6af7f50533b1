"""judgment ids are never reused: the SQLite judgment table gets AUTOINCREMENT

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00

Without AUTOINCREMENT SQLite gives a new row the largest rowid plus one, so once the newest row is deleted its id
comes back. An undo deletes the rater's newest judgment, and the next judgment then took the undone one's id: the
JSON API had already returned that id to the client (judgment_id), which now named a different judgment. With
AUTOINCREMENT SQLite remembers the largest id ever used (sqlite_sequence) and never hands it out again. Judgments
are the only rows the app deletes, so only this table needs it.

SQLite cannot change this on an existing table: the table is rebuilt (batch mode: copy, drop, rename) with every row,
index, unique constraint and foreign key; collect/migrations/env.py turns foreign keys off for the rebuild, so that
dropping the old table cascades nowhere, and checks them afterwards. No table references judgment.id. The rebuild
starts the counter at the largest id the table still holds: an id freed by an undo before this upgrade can still be
used once more. PostgreSQL's sequences never reuse ids: nothing to do there.

A later batch migration that rebuilds judgment on SQLite must pass table_kwargs={"sqlite_autoincrement": True}
again: reflection does not read AUTOINCREMENT back, so the rebuilt table would lose it.
"""
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _rebuild_judgment(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    table_kwargs = {"sqlite_autoincrement": True} if autoincrement else {}
    with op.batch_alter_table('judgment', schema=None, recreate="always", table_kwargs=table_kwargs):
        pass


def upgrade() -> None:
    _rebuild_judgment(autoincrement=True)


def downgrade() -> None:
    _rebuild_judgment(autoincrement=False)

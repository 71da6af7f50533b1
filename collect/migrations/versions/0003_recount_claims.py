"""recount claims: every pair's n_claimed as the overlap counts it

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 17:00:00

Until now each import recounted n_claimed for every pair of its project from its judgments and assignments, and
that recount also counted repeats (which take no overlap slot) and adjudications, so a pair shown again as a repeat,
or decided by an admin, could stay one rater short of its overlap. Imports now add only their own judgments; this
recount sets each pair once to what the assignment code keeps from here on: its imported judgments plus its
assignments that hold a slot (open or submitted, not repeats). No schema change, so nothing to undo.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text(
        "UPDATE pair SET n_claimed = "
        "(SELECT count(*) FROM judgment WHERE judgment.pair_id = pair.id AND judgment.kind = 'import') + "
        "(SELECT count(*) FROM assignment WHERE assignment.pair_id = pair.id "
        "AND assignment.status IN ('open', 'submitted') AND NOT assignment.is_repeat)"))


def downgrade() -> None:
    pass

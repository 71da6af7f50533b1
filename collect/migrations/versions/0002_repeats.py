"""repeats: a pair served again to the same rater with the sides swapped (swap consistency)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 11:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# 0001 left the (pair, rater) unique constraint unnamed: PostgreSQL named it itself, SQLite reflects it
# without a name. The batch naming convention gives the SQLite one a name that can be dropped.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _pair_rater_constraint() -> str:
    for constraint in sa.inspect(op.get_bind()).get_unique_constraints("assignment"):
        if constraint["column_names"] == ["pair_id", "rater_id"]:
            return constraint["name"] or "uq_assignment_pair_id_rater_id"
    raise RuntimeError("assignment has no (pair_id, rater_id) unique constraint to replace")


def upgrade() -> None:
    with op.batch_alter_table('project', schema=None) as batch_op:
        batch_op.add_column(sa.Column('repeat_rate', sa.Float(), server_default='0', nullable=False))
    old = _pair_rater_constraint()
    with op.batch_alter_table('assignment', schema=None, naming_convention=NAMING) as batch_op:
        batch_op.add_column(sa.Column('is_repeat', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.drop_constraint(old, type_='unique')
        batch_op.create_unique_constraint('uq_assignment_pair_rater_repeat', ['pair_id', 'rater_id', 'is_repeat'])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM assignment WHERE is_repeat"))
    with op.batch_alter_table('assignment', schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint('uq_assignment_pair_rater_repeat', type_='unique')
        batch_op.create_unique_constraint('uq_assignment_pair_id_rater_id', ['pair_id', 'rater_id'])
        batch_op.drop_column('is_repeat')
    with op.batch_alter_table('project', schema=None) as batch_op:
        batch_op.drop_column('repeat_rate')

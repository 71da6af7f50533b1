"""Alembic environment: runs against the engine prefloop hands over (collect.db.upgrade)."""

from alembic import context

from collect.db import get_engine
from collect.models import Base

config = context.config
engine = config.attributes.get("engine") or get_engine()

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

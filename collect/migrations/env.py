"""Alembic environment: runs against the engine prefloop hands over (collect.db.upgrade)."""

from alembic import context

from collect.db import get_engine
from collect.models import Base

config = context.config
engine = config.attributes.get("engine") or get_engine()

with engine.connect() as connection:
    # On SQLite, batch migrations rebuild a table (copy, drop, rename). With foreign keys on, dropping the old
    # table deletes its rows first, and ON DELETE CASCADE / SET NULL would empty or cut every table that
    # points at it. The pragma only takes effect outside a transaction: set it on the raw connection now.
    raw = connection.connection.dbapi_connection if connection.dialect.name == "sqlite" else None
    if raw is not None:
        raw.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
            if raw is not None:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left rows pointing at nothing: {broken[:5]}")
        connection.commit()
    finally:
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=ON")

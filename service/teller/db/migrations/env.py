"""Alembic environment for Teller (online migrations only)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from teller.db.migrate import record_step
from teller.db.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url must be set"
connectable = create_engine(url, poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        on_version_apply=record_step,
    )
    with context.begin_transaction():
        context.run_migrations()

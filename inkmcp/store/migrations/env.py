"""Alembic environment for the control-plane store.

Configured programmatically by `inkmcp.store.db` (no alembic.ini): the caller opens the connection,
takes the migration advisory lock and passes the connection in `config.attributes["connection"]`,
so the upgrade runs inside the caller's transaction (PostgreSQL has transactional DDL: a failed
migration leaves nothing behind).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from inkmcp.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: emit SQL for an operator to review."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

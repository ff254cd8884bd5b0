"""Alembic environment: the URL comes from the caller (qiao migrate) or QIAO_DATABASE_URL."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from app.config import get_settings
from app.db import normalise_url

config = context.config
connection = config.attributes.get("connection")


def run() -> None:
    if connection is not None:
        context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().effective_database_url
    engine = engine_from_config({"sqlalchemy.url": normalise_url(url)}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


run()

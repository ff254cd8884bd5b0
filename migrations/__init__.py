"""Alembic migrations: the only way Qiao's schema changes."""

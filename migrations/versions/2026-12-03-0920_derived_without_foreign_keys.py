"""Derived rows without foreign keys on PostgreSQL: the search index tables, the policy facts and the MPI's
blocking keys are written only beside the row they derive from, in its transaction, and resources are never
deleted (a deletion is a version). Checking each derived row's key cost about 40% of their COPY rate (28k against
50k rows/s into a 3,000,000-row index table, 2026-12-03), and they are most of what a load or a rebuild writes.
SQLite keeps its checks: the embedded default is not where loads are heavy.

Revision ID: 0015_derived_without_fk
Revises: 0014_master_facts
Create Date: 2026-12-03 09:20:00
"""

from alembic import op

revision = "0015_derived_without_fk"
down_revision = "0014_master_facts"
branch_labels = None
depends_on = None

DERIVED = ("search_token", "search_string", "search_date", "search_reference", "care_relation", "consent_denial")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in DERIVED:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS fk_{table}_resource_pk_resource")
    for name in ("mpi_block_record_pk_fkey", "fk_mpi_block_record_pk_mpi_record"):
        op.execute(f"ALTER TABLE mpi_block DROP CONSTRAINT IF EXISTS {name}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in DERIVED:
        op.create_foreign_key(f"fk_{table}_resource_pk_resource", table, "resource", ["resource_pk"], ["pk"])
    op.create_foreign_key("fk_mpi_block_record_pk_mpi_record", "mpi_block", "mpi_record", ["record_pk"], ["pk"])

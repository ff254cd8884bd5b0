"""The policy's facts stay vacuumed as they grow (PostgreSQL only). Every access to another organization's
resident reads care_relation and consent_denial by index (app/auth/policy.py); the read stays index-only only
where autovacuum has marked the table's pages all-visible. By default it comes after 20% new rows: at a million
care relations, the newest 200,000 (the residents being cared for now, the ones read most) would each cost a heap
page read. After 1% (and the usual 1,000 rows), it follows them closely.

Revision ID: 0020_policy_facts_vacuumed
Revises: 0019_mpi_id_half_with_name
Create Date: 2026-12-07 19:00:00
"""

from alembic import op

revision = "0020_policy_facts_vacuumed"
down_revision = "0019_mpi_id_half_with_name"
branch_labels = None
depends_on = None

TABLES = ("care_relation", "consent_denial")
SETTINGS = ("autovacuum_vacuum_insert_scale_factor", "autovacuum_vacuum_scale_factor")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} SET ({', '.join(f'{name} = 0.01' for name in SETTINGS)})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} RESET ({', '.join(SETTINGS)})")

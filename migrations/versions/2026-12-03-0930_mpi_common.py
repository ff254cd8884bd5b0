"""The records under each common term-frequency value, as `qiao mpi rebuild` counted them (app/mpi/linker.py):
online matching starts from these instead of counting a common name's records again in every process.

Revision ID: 0016_mpi_common
Revises: 0015_derived_without_fk
Create Date: 2026-12-03 09:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_mpi_common"
down_revision = "0015_derived_without_fk"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mpi_common",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mpi_common")

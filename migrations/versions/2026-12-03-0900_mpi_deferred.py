"""Patients written while `qiao mpi rebuild` ran, whose matching waits for the rebuild to place them
(app/mpi/rebuild_lock.py).

Revision ID: 0013_mpi_deferred
Revises: 0012_subscription_resend
Create Date: 2026-12-03 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_mpi_deferred"
down_revision = "0012_subscription_resend"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mpi_deferred",
        sa.Column("patient_id", sa.String(64), primary_key=True),
        sa.Column("deferred_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mpi_deferred")

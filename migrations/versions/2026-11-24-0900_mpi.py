"""Master patient index: source records' features and masters, blocking keys, review queue, steward decisions and
link history.

Revision ID: 0005_mpi
Revises: 0004_inbound
Create Date: 2026-11-24 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_mpi"
down_revision = "0004_inbound"
branch_labels = None
depends_on = None

pk_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mpi_record",
        sa.Column("pk", pk_type, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.String(64), nullable=False, unique=True),
        sa.Column("master_id", sa.String(64), nullable=False),
        sa.Column("org", sa.String(64), nullable=True),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("basis", sa.String(16), nullable=False),
        sa.Column("probability", sa.Float, nullable=True),
        sa.Column("updated_at", moment, nullable=False),
    )
    op.create_index("ix_mpi_record_master_id", "mpi_record", ["master_id"])
    op.create_table(
        "mpi_block",
        sa.Column("key", sa.String(160), nullable=False),
        sa.Column("record_pk", pk_type, sa.ForeignKey("mpi_record.pk"), nullable=False),
    )
    op.create_index("ix_mpi_block_key", "mpi_block", ["key"])
    op.create_index("ix_mpi_block_record_pk", "mpi_block", ["record_pk"])
    op.create_table(
        "mpi_review",
        sa.Column("id", pk_type, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("master_id", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("levels", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", moment, nullable=False),
        sa.Column("decided_at", moment, nullable=True),
        sa.Column("decided_by", sa.String(64), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_mpi_review_status_id", "mpi_review", ["status", "id"])
    op.create_index("ix_mpi_review_patient_id", "mpi_review", ["patient_id"])
    op.create_table(
        "mpi_distinct",
        sa.Column("patient_a", sa.String(64), primary_key=True),
        sa.Column("patient_b", sa.String(64), primary_key=True),
        sa.Column("decided_by", sa.String(64), nullable=False),
        sa.Column("decided_at", moment, nullable=False),
    )
    op.create_table(
        "mpi_link_event",
        sa.Column("id", pk_type, primary_key=True, autoincrement=True),
        sa.Column("at", moment, nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("master_id", sa.String(64), nullable=False),
        sa.Column("previous_master_id", sa.String(64), nullable=True),
        sa.Column("basis", sa.String(16), nullable=False),
        sa.Column("probability", sa.Float, nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_mpi_link_event_patient_id", "mpi_link_event", ["patient_id"])


def downgrade() -> None:
    for table in ("mpi_link_event", "mpi_distinct", "mpi_review", "mpi_block", "mpi_record"):
        op.drop_table(table)

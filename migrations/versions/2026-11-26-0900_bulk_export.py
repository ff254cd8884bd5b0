"""Bulk Data export jobs, their finished files and the residents they are limited to.

Revision ID: 0007_bulk
Revises: 0006_referrals
Create Date: 2026-11-26 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_bulk"
down_revision = "0006_referrals"
branch_labels = None
depends_on = None

pk_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bulk_job",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("org", sa.String(64), nullable=True),
        sa.Column("access", sa.String(16), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("requires_token", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", moment, nullable=False),
        sa.Column("transaction_time", moment, nullable=True),
        sa.Column("completed_at", moment, nullable=True),
        sa.Column("lease_until", moment, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("polled_at", moment, nullable=True),
        sa.Column("progress", sa.String(100), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_bulk_job_client_id", "bulk_job", ["client_id"])
    op.create_table(
        "bulk_file",
        sa.Column("pk", pk_type, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("resources", sa.Integer, nullable=False),
        sa.Column("last_res_id", sa.String(64), nullable=True),
        sa.Column("ends_type", sa.Boolean, nullable=False),
    )
    op.create_index("ix_bulk_file_job_id", "bulk_file", ["job_id"])
    op.create_table(
        "bulk_patient",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("patient_id", sa.String(64), primary_key=True),
    )
    op.create_index("ix_bulk_patient_patient_id", "bulk_patient", ["patient_id"])


def downgrade() -> None:
    for table in ("bulk_patient", "bulk_file", "bulk_job"):
        op.drop_table(table)

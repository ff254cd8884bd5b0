"""Inbound messages: the raw log that adapters write before processing.

Revision ID: 0004_inbound
Revises: 0003_security
Create Date: 2026-11-24 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_inbound"
down_revision = "0003_security"
branch_labels = None
depends_on = None

pk_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inbound_message",
        sa.Column("id", pk_type, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("adapter", sa.String(32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("charset", sa.String(16), nullable=True),
        sa.Column("kind", sa.String(32), nullable=True),
        sa.Column("control_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("duplicate_of", pk_type, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("mapping", sa.String(128), nullable=True),
        sa.Column("resources", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_inbound_message_source_control_id", "inbound_message", ["source", "control_id"])
    op.create_index("ix_inbound_message_source_content_hash", "inbound_message", ["source", "content_hash"])
    op.create_index("ix_inbound_message_state_id", "inbound_message", ["state", "id"])


def downgrade() -> None:
    op.drop_table("inbound_message")

"""Referral deadlines: the service levels a sent referral and a follow-up Task start, watched by the clock's
escalations pass (app/referrals/escalations.py). Referrals sent before this upgrade have none.

Revision ID: 0010_referral_deadlines
Revises: 0009_clock
Create Date: 2026-11-29 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_referral_deadlines"
down_revision = "0009_clock"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "referral_deadline",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("due_at", sa.BigInteger, primary_key=True),
    )
    op.create_index("ix_referral_deadline_due_at", "referral_deadline", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_referral_deadline_due_at", "referral_deadline")
    op.drop_table("referral_deadline")

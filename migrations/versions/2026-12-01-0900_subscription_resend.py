"""Replay by filter: the delivered events of a subscription that are to be sent again (app/subscriptions/service.py).

Revision ID: 0012_subscription_resend
Revises: 0011_followup_by_record
Create Date: 2026-12-01 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_subscription_resend"
down_revision = "0011_followup_by_record"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscription_resend",
        sa.Column("subscription_id", sa.String(64), primary_key=True),
        sa.Column("event_number", sa.BigInteger, primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("subscription_resend")

"""Referral moves; Subscription delivery state and the notification outbox.

Revision ID: 0006_referrals
Revises: 0005_mpi
Create Date: 2026-11-25 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_referrals"
down_revision = "0005_mpi"
branch_labels = None
depends_on = None

pk_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "referral_transition",
        sa.Column("pk", pk_type, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("from_stage", sa.String(32), nullable=True),
        sa.Column("to_stage", sa.String(32), nullable=False),
        sa.Column("actor_role", sa.String(16), nullable=False),
        sa.Column("actor_org", sa.String(64), nullable=True),
        sa.Column("actor_client", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("at", moment, nullable=False),
    )
    op.create_index("ix_referral_transition_task_id", "referral_transition", ["task_id"])
    op.create_table(
        "subscription_state",
        sa.Column("subscription_id", sa.String(64), primary_key=True),
        sa.Column("org", sa.String(64), nullable=True),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("access", sa.String(16), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("filters", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("content", sa.String(16), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("heartbeat_seconds", sa.Integer, nullable=True),
        sa.Column("timeout_seconds", sa.Integer, nullable=False),
        sa.Column("max_count", sa.Integer, nullable=False),
        sa.Column("secret", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("events_count", sa.BigInteger, nullable=False),
        sa.Column("delivered_through", sa.BigInteger, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", moment, nullable=False),
        sa.Column("heartbeat_at", moment, nullable=True),
        sa.Column("lease_until", moment, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_subscription_state_topic", "subscription_state", ["topic"])
    op.create_table(
        "subscription_event",
        sa.Column("pk", pk_type, primary_key=True, autoincrement=True),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("event_number", sa.BigInteger, nullable=False),
        sa.Column("resource_pk", sa.BigInteger, nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("at", moment, nullable=False),
        sa.UniqueConstraint("subscription_id", "event_number", name="uq_subscription_event_subscription_id_event_number"),
    )


def downgrade() -> None:
    for table in ("subscription_event", "subscription_state", "referral_transition"):
        op.drop_table(table)

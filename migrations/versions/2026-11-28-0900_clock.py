"""The clock's watermarks (app/clock.py) and an index for its registries pass: registry entries whose enrolment
starts or ends on a day nothing is written. The registries pass starts from this upgrade: entries written before it
were derived when they were written, and `qiao registries rebuild` derives them again if wanted.

Revision ID: 0009_clock
Revises: 0008_indicators
Create Date: 2026-11-28 09:00:00
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0009_clock"
down_revision = "0008_indicators"
branch_labels = None
depends_on = None


def upgrade() -> None:
    clock_pass = op.create_table(
        "clock_pass",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("done_until", sa.BigInteger, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.bulk_insert(clock_pass, [{"name": "registries", "done_until": time.time_ns() // 1000, "lease_until": None}])
    op.create_index("ix_registry_span_registry_until", "registry_span", ["registry", "until"])


def downgrade() -> None:
    op.drop_index("ix_registry_span_registry_until", "registry_span")
    op.drop_table("clock_pass")

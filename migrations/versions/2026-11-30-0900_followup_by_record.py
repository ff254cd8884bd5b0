"""A record's follow-ups in date order: the national rules' "two uncontrolled follow-ups in a row" looks up the
previous one with every follow-up written (app/referrals/drafts.py).

Revision ID: 0011_followup_by_record
Revises: 0010_referral_deadlines
Create Date: 2026-11-30 09:00:00
"""

from alembic import op

revision = "0011_followup_by_record"
down_revision = "0010_referral_deadlines"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_indicator_followup_patient_id_programme_at", "indicator_followup", ["patient_id", "programme", "at"])


def downgrade() -> None:
    op.drop_index("ix_indicator_followup_patient_id_programme_at", "indicator_followup")

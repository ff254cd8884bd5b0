"""The indicators' narrow tables: registry spans and public-health follow-ups (app/cdc/tables.py). Derived data:
on a database that already holds residents, run `qiao registries rebuild` after this upgrade to fill them.

Revision ID: 0008_indicators
Revises: 0007_bulk
Create Date: 2026-11-27 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_indicators"
down_revision = "0007_bulk"
branch_labels = None
depends_on = None

pk_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "registry_span",
        sa.Column("registry", sa.String(64), nullable=False),
        sa.Column("master_id", sa.String(64), nullable=False),
        sa.Column("entry_id", sa.String(64), nullable=False),
        sa.Column("since", sa.BigInteger, nullable=False),
        sa.Column("until", sa.BigInteger, nullable=True),
        sa.Column("organization", sa.String(64), nullable=True),
        sa.Column("home_district", sa.String(6), nullable=True),
        sa.Column("birth_date", sa.String(10), nullable=True),
    )
    op.create_index("ix_registry_span_master_id", "registry_span", ["master_id"])
    op.create_index("ix_registry_span_registry_since", "registry_span", ["registry", "since"])
    op.create_table(
        "indicator_followup",
        sa.Column("encounter_pk", pk_type, primary_key=True, autoincrement=False),
        sa.Column("encounter_id", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("programme", sa.String(32), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("face_to_face", sa.Boolean, nullable=False),
        sa.Column("has_reading", sa.Boolean, nullable=False),
        sa.Column("systolic", sa.Float, nullable=True),
        sa.Column("diastolic", sa.Float, nullable=True),
        sa.Column("glucose", sa.Float, nullable=True),
    )
    op.create_index("ix_indicator_followup_programme_at", "indicator_followup", ["programme", "at"])


def downgrade() -> None:
    op.drop_table("indicator_followup")
    op.drop_table("registry_span")

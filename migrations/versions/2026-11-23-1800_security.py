"""Security: clients, assertion ids, signing keys, resource ownership, care relations, consent denials, audit chain.

Revision ID: 0003_security
Revises: 0002_search_statistics
Create Date: 2026-11-23 18:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_security"
down_revision = "0002_search_statistics"
branch_labels = None
depends_on = None

pk_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("resource") as batch:
        batch.add_column(sa.Column("org", sa.String(64), nullable=True))
        batch.add_column(sa.Column("patient", sa.String(64), nullable=True))
    op.create_index("ix_resource_patient", "resource", ["patient"])

    op.create_table(
        "auth_client",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("organization", sa.String(64), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("access", sa.String(16), nullable=False),
        sa.Column("break_glass", sa.Boolean, nullable=False),
        sa.Column("jwks", sa.Text, nullable=True),
        sa.Column("jwks_url", sa.Text, nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name="pk_auth_client"),
    )
    op.create_table(
        "auth_jti",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("jti", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name="pk_auth_jti"),
    )
    op.create_index("ix_auth_jti_expires_at", "auth_jti", ["expires_at"])
    op.create_table(
        "auth_key",
        sa.Column("kid", sa.String(32), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kid", name="pk_auth_key"),
    )
    for name in ("care_relation", "consent_denial"):
        op.create_table(
            name,
            sa.Column("resource_pk", pk_type, nullable=False),
            sa.Column("patient_id", sa.String(64), nullable=False),
            sa.Column("org_id", sa.String(64), nullable=False),
            sa.ForeignKeyConstraint(["resource_pk"], ["resource.pk"], name=f"fk_{name}_resource_pk_resource"),
        )
        op.create_index(f"ix_{name}_resource_pk", name, ["resource_pk"])
        op.create_index(f"ix_{name}_patient_id_org_id", name, ["patient_id", "org_id"])
    op.create_table(
        "audit_pending",
        sa.Column("resource_pk", pk_type, nullable=False),
        sa.PrimaryKeyConstraint("resource_pk", name="pk_audit_pending"),
        sa.ForeignKeyConstraint(["resource_pk"], ["resource.pk"], name="fk_audit_pending_resource_pk_resource"),
    )
    op.create_table(
        "audit_chain",
        sa.Column("position", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("resource_pk", pk_type, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("chain_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_audit_chain"),
        sa.UniqueConstraint("resource_pk", name="uq_audit_chain_resource_pk"),
        sa.ForeignKeyConstraint(["resource_pk"], ["resource.pk"], name="fk_audit_chain_resource_pk_resource"),
    )


def downgrade() -> None:
    for name in ("audit_chain", "audit_pending", "consent_denial", "care_relation", "auth_key", "auth_jti", "auth_client"):
        op.drop_table(name)
    op.drop_index("ix_resource_patient", "resource")
    with op.batch_alter_table("resource") as batch:
        batch.drop_column("patient")
        batch.drop_column("org")

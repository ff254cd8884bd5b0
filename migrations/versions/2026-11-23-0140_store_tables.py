"""Resource store: resources, their versions and the search index.

Revision ID: 0001_store
Revises:
Create Date: 2026-11-23 01:40:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_store"
down_revision = None
branch_labels = None
depends_on = None

pk_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
content_type = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
#: "C" collation in PostgreSQL so that prefix LIKE uses the btree index.
norm_type = sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "resource",
        sa.Column("pk", pk_type, primary_key=True, autoincrement=True),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_resource"),
        sa.UniqueConstraint("res_type", "res_id", name="uq_resource_res_type_res_id"),
    )
    op.create_index("ix_resource_res_type_last_updated", "resource", ["res_type", "last_updated"])

    op.create_table(
        "resource_version",
        sa.Column("resource_pk", pk_type, nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("content", content_type, nullable=True),
        sa.PrimaryKeyConstraint("resource_pk", "version_id", name="pk_resource_version"),
        sa.ForeignKeyConstraint(["resource_pk"], ["resource.pk"], name="fk_resource_version_resource_pk_resource"),
    )
    op.create_index("ix_resource_version_last_updated", "resource_version", ["last_updated"])
    op.create_index("ix_resource_version_res_type_last_updated", "resource_version", ["res_type", "last_updated"])

    def index_table(name: str, columns: list[sa.Column], index_columns: list[str]) -> None:
        op.create_table(
            name,
            sa.Column("resource_pk", pk_type, nullable=False),
            sa.Column("res_type", sa.String(64), nullable=False),
            sa.Column("param", sa.String(64), nullable=False),
            *columns,
            sa.ForeignKeyConstraint(["resource_pk"], ["resource.pk"], name=f"fk_{name}_resource_pk_resource"),
        )
        op.create_index(f"ix_{name}_resource_pk", name, ["resource_pk"])
        op.create_index(f"ix_{name}_{'_'.join(index_columns)}", name, index_columns)

    index_table(
        "search_token",
        [sa.Column("system", sa.String(255), nullable=False), sa.Column("code", sa.String(255), nullable=False)],
        ["res_type", "param", "code", "system"],
    )
    index_table(
        "search_string",
        [sa.Column("value_norm", norm_type, nullable=False), sa.Column("value_exact", sa.String(255), nullable=False)],
        ["res_type", "param", "value_norm"],
    )
    index_table(
        "search_date",
        [sa.Column("low", sa.BigInteger, nullable=False), sa.Column("high", sa.BigInteger, nullable=False)],
        ["res_type", "param", "low", "high"],
    )
    index_table(
        "search_reference",
        [sa.Column("target_type", sa.String(64), nullable=False), sa.Column("target_id", sa.String(255), nullable=False)],
        ["target_id", "target_type", "param"],
    )


def downgrade() -> None:
    for name in ("search_reference", "search_date", "search_string", "search_token", "resource_version", "resource"):
        op.drop_table(name)

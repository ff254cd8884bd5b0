"""Tables of the resource store.

`resource` holds one row per logical resource (its current version number and state, and who it belongs to); `resource_version` holds
every version's content, so `_history` needs nothing else. The `search_*` tables are the narrow search index of
the current versions, rewritten in the same transaction as the resource.
"""

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    cast,
)
from sqlalchemy.dialects.postgresql import JSONB

from app.db import metadata

PrimaryKey = BigInteger().with_variant(Integer(), "sqlite")


STORED_JSON = Text().with_variant(JSONB(), "postgresql")


class JsonText(TypeDecorator[str]):
    """JSON text in SQLite, JSONB in PostgreSQL; always bound and read as text, so the stored bytes are served."""

    impl = Text
    cache_ok = True

    def bind_expression(self, bindvalue: Any) -> Any:
        return cast(bindvalue, STORED_JSON)

    def column_expression(self, column: Any) -> Any:
        return cast(column, Text)


resource = Table(
    "resource",
    metadata,
    Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False),
    #: the Organization (id) whose client first sent the resource: "its own data" in the access policy
    Column("org", String(64), nullable=True),
    #: the resident (Patient id) the resource is about, None for data about no one (app/auth/policy.py)
    Column("patient", String(64), nullable=True),
    UniqueConstraint("res_type", "res_id"),
    Index(None, "res_type", "last_updated"),
    Index(None, "patient"),
)

resource_version = Table(
    "resource_version",
    metadata,
    Column("resource_pk", PrimaryKey, ForeignKey("resource.pk"), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("content", JsonText, nullable=True),
    Index(None, "last_updated"),
    Index(None, "res_type", "last_updated"),
)


def _index_table(name: str, *columns: Any) -> Table:
    """Derived rows, written only beside their resource's row: no foreign key on PostgreSQL (migration 0015)."""
    return Table(
        name,
        metadata,
        Column("resource_pk", PrimaryKey, nullable=False, index=True),
        Column("res_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
    )


search_token = _index_table(
    "search_token",
    Column("system", String(255), nullable=False),
    Column("code", String(255), nullable=False),
    Index(None, "res_type", "param", "code", "system"),
)

search_string = _index_table(
    "search_string",
    Column("value_norm", String(255), nullable=False),
    Column("value_exact", String(255), nullable=False),
    Index(None, "res_type", "param", "value_norm"),
)

search_date = _index_table(
    "search_date",
    Column("low", BigInteger, nullable=False),
    Column("high", BigInteger, nullable=False),
    Index(None, "res_type", "param", "low", "high"),
)

search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(255), nullable=False),
    Index(None, "target_id", "target_type", "param"),
)

INDEX_TABLES = {
    "token": search_token,
    "string": search_string,
    "date": search_date,
    "reference": search_reference,
}

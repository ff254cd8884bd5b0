"""Tables of the security layer: registered clients, used assertion ids, the token signing key, the policy's
derived facts (care relations, consent denials) and the audit trail's hash chain."""

from sqlalchemy import BigInteger, Boolean, Column, DateTime, ForeignKey, Index, PrimaryKeyConstraint, String, Table, Text

from app.db import metadata
from app.store.tables import PrimaryKey

auth_client = Table(
    "auth_client",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("organization", String(64), nullable=False),
    Column("scope", Text, nullable=False),
    Column("access", String(16), nullable=False),
    Column("break_glass", Boolean, nullable=False),
    Column("jwks", Text, nullable=True),
    Column("jwks_url", Text, nullable=True),
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

auth_jti = Table(
    "auth_jti",
    metadata,
    Column("client_id", String(64), nullable=False),
    Column("jti", String(255), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("client_id", "jti"),
    Index(None, "expires_at"),
)

auth_key = Table(
    "auth_key",
    metadata,
    Column("kid", String(32), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

def _resident_fact(name: str) -> Table:
    """(resident, Organization) pairs derived from one resource, rewritten with it (app/auth/relations.py)."""
    return Table(
        name,
        metadata,
        Column("resource_pk", PrimaryKey, nullable=False, index=True),  # derived: no foreign key (migration 0015)
        Column("patient_id", String(64), nullable=False),
        Column("org_id", String(64), nullable=False),
        Index(None, "patient_id", "org_id"),
    )


#: the Organizations caring for a resident
care_relation = _resident_fact("care_relation")
#: the Organizations a resident's Consent denies, or "*" for every one but the data's own sender
consent_denial = _resident_fact("consent_denial")

audit_pending = Table(
    "audit_pending",
    metadata,
    Column("resource_pk", PrimaryKey, ForeignKey("resource.pk"), primary_key=True),
)

audit_chain = Table(
    "audit_chain",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("resource_pk", PrimaryKey, ForeignKey("resource.pk"), nullable=False, unique=True),
    Column("content_hash", String(64), nullable=False),
    Column("chain_hash", String(64), nullable=False),
)

"""Each Subscription's delivery state, and the outbox of its events (written in the transaction of the change)."""

from sqlalchemy import BigInteger, Column, DateTime, Integer, String, Table, Text, UniqueConstraint

from app.db import metadata
from app.store.tables import PrimaryKey

subscription_state = Table(
    "subscription_state",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    # who subscribed: notifications carry only what this client may read
    Column("org", String(64), nullable=True),
    Column("client_id", String(255), nullable=False),
    Column("access", String(16), nullable=False),
    Column("scope", Text, nullable=False),
    # what and where, from the Subscription resource
    Column("topic", String(255), nullable=False, index=True),
    Column("filters", Text, nullable=False),  # JSON [[resource type, [[parameter, [values]], …]], …]
    Column("endpoint", Text, nullable=False),
    Column("content", String(16), nullable=False),  # empty | id-only | full-resource
    Column("content_type", String(64), nullable=False),
    Column("headers", Text, nullable=False),  # JSON ["Name: value", …]
    Column("heartbeat_seconds", Integer, nullable=True),
    Column("timeout_seconds", Integer, nullable=False),
    Column("max_count", Integer, nullable=False),
    Column("secret", String(255), nullable=False),  # HMAC-SHA256 key; never in the resource
    # delivery
    Column("status", String(16), nullable=False),  # requested | active | error | off
    Column("events_count", BigInteger, nullable=False),
    Column("delivered_through", BigInteger, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
)

subscription_event = Table(
    "subscription_event",
    metadata,
    Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
    Column("subscription_id", String(64), nullable=False),
    Column("event_number", BigInteger, nullable=False),
    Column("resource_pk", BigInteger, nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("subscription_id", "event_number"),
)

subscription_resend = Table(
    "subscription_resend",
    metadata,
    # events already delivered that an operator or the subscriber asked to have sent again (replay by filter)
    Column("subscription_id", String(64), primary_key=True),
    Column("event_number", BigInteger, primary_key=True),
)

"""The inbound log: every message as received (raw bytes), its state and, when it failed, why."""

from sqlalchemy import Column, DateTime, Index, Integer, LargeBinary, String, Table, Text

from app.db import metadata
from app.store.tables import PrimaryKey

inbound_message = Table(
    "inbound_message",
    metadata,
    Column("id", PrimaryKey, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("channel", String(16), nullable=False),  # mllp, http, file
    Column("adapter", String(32), nullable=False),  # hl7v2, …: which mappings folder applies
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("charset", String(16), nullable=True),
    Column("kind", String(32), nullable=True),  # e.g. ADT^A04
    Column("control_id", String(64), nullable=True),  # MSH-10
    Column("state", String(16), nullable=False),  # received, processed, failed, duplicate
    Column("duplicate_of", PrimaryKey, nullable=True),
    Column("error", Text, nullable=True),  # OperationOutcome JSON
    Column("mapping", String(128), nullable=True),  # name|version of the mapping that processed it
    Column("resources", Text, nullable=True),  # JSON list of the references it wrote
    Column("attempts", Integer, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=True),
    Index(None, "source", "control_id"),
    Index(None, "source", "content_hash"),
    Index(None, "state", "id"),
)

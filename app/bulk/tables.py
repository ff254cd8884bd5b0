"""Bulk Data export jobs: the job (who asked, what, how far), the files it has finished, and the residents a
patient- or group-level export is limited to (fixed when the export is asked for)."""

from sqlalchemy import Boolean, Column, DateTime, Index, Integer, String, Table, Text

from app.db import metadata
from app.store.tables import PrimaryKey

bulk_job = Table(
    "bulk_job",
    metadata,
    Column("id", String(64), primary_key=True),
    # who asked: the export runs with this client's scopes and access policy
    Column("client_id", String(255), nullable=False, index=True),
    Column("org", String(64), nullable=True),
    Column("access", String(16), nullable=False),
    Column("scope", Text, nullable=False),
    Column("purpose", String(16), nullable=False),
    # what: the kick-off URL and its parsed parameters (JSON of app.bulk.params.ExportRequest)
    Column("request", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("requires_token", Boolean, nullable=False),
    # accepted → running → complete | failed; cancelled or expired at any point
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("transaction_time", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("polled_at", DateTime(timezone=True), nullable=True),
    Column("progress", String(100), nullable=True),  # X-Progress
    Column("error", Text, nullable=True),
)

bulk_file = Table(
    "bulk_file",
    metadata,
    Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("kind", String(8), nullable=False),  # output | deleted | error
    Column("res_type", String(64), nullable=False),
    Column("part", Integer, nullable=False),
    Column("resources", Integer, nullable=False),
    # where the next file of this type starts (keyset on res_id), and whether this one ends its type
    Column("last_res_id", String(64), nullable=True),
    Column("ends_type", Boolean, nullable=False),
)

bulk_patient = Table(
    "bulk_patient",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("patient_id", String(64), primary_key=True),
    Index(None, "patient_id"),
)

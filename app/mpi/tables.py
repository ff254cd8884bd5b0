"""Tables of the master patient index: each source Patient's normalised features and master, its blocking keys,
the review queue, pairs a data steward declared different, and every link change (so that merges can be undone)."""

from sqlalchemy import Column, DateTime, Float, Index, Integer, String, Table, Text

from app.db import metadata
from app.store.tables import PrimaryKey

mpi_record = Table(
    "mpi_record",
    metadata,
    Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False, unique=True),
    Column("master_id", String(64), nullable=False, index=True),
    Column("org", String(64), nullable=True),  # the source institution
    Column("features", Text, nullable=False),  # JSON of app.mpi.features.Features
    Column("basis", String(16), nullable=False),  # match, new, steward, merge-message
    Column("probability", Float, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # a candidate's master read from the index alone (PostgreSQL; migration 0017)
    Index("ix_mpi_record_pk_master", "pk", unique=True, postgresql_include=["master_id"]),
)

mpi_block = Table(
    "mpi_block",
    metadata,
    Column("key", String(160), nullable=False),
    Column("record_pk", PrimaryKey, nullable=False, index=True),  # derived from mpi_record: no foreign key (migration 0015)
    Index("ix_mpi_block_key_record", "key", "record_pk"),  # a key's records read from the index alone
)

mpi_review = Table(
    "mpi_review",
    metadata,
    Column("id", PrimaryKey, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),  # the source record in doubt
    Column("master_id", String(64), nullable=False),  # the master it may belong to
    Column("probability", Float, nullable=False),
    Column("levels", Text, nullable=False),  # JSON: comparison → level name
    Column("status", String(16), nullable=False),  # open, same, different, obsolete
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("decided_by", String(64), nullable=True),
    Column("note", Text, nullable=True),
    Index(None, "status", "id"),
    Index(None, "patient_id"),
)

mpi_distinct = Table(
    "mpi_distinct",
    metadata,
    Column("patient_a", String(64), primary_key=True),  # the smaller id
    Column("patient_b", String(64), primary_key=True),
    Column("decided_by", String(64), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
)

mpi_link_event = Table(
    "mpi_link_event",
    metadata,
    Column("id", PrimaryKey, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("patient_id", String(64), nullable=False, index=True),
    Column("master_id", String(64), nullable=False),
    Column("previous_master_id", String(64), nullable=True),
    Column("basis", String(16), nullable=False),
    Column("probability", Float, nullable=True),
    Column("actor", String(64), nullable=False),
    Column("note", Text, nullable=True),
)

mpi_deferred = Table(
    "mpi_deferred",
    metadata,
    Column("patient_id", String(64), primary_key=True),  # a source Patient written while a rebuild ran
    Column("deferred_at", DateTime(timezone=True), nullable=False),
)

mpi_common = Table(
    "mpi_common",
    metadata,
    Column("key", String(160), primary_key=True),  # a term-frequency key (name, name sound, phone) of many records
    Column("records", Integer, nullable=False),
    Column("counted_at", DateTime(timezone=True), nullable=False),
)

mpi_census = Table(
    "mpi_census",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # one row: 1
    Column("residents", Integer, nullable=False),  # masters
    Column("records", Integer, nullable=False),
    Column("counted_at", DateTime(timezone=True), nullable=False),
)

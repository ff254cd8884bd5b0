"""The referral workflow's own tables: every move of a referral Task (who, when, why), the trail behind loop metrics such
as time to accept; and the deadlines its service levels set, which the clock's escalations pass watches."""

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table

from app.db import metadata
from app.store.tables import PrimaryKey

referral_transition = Table(
    "referral_transition",
    metadata,
    Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
    Column("task_id", String(64), nullable=False, index=True),
    Column("version_id", Integer, nullable=False),
    Column("from_stage", String(32), nullable=True),  # None: the Task was created
    Column("to_stage", String(32), nullable=False),
    Column("actor_role", String(16), nullable=False),  # requester, owner, server
    Column("actor_org", String(64), nullable=True),
    Column("actor_client", String(255), nullable=False),
    Column("reason", String(500), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

referral_deadline = Table(
    "referral_deadline",
    metadata,
    Column("task_id", String(64), primary_key=True),  # the referral or follow-up Task the deadline is for
    Column("kind", String(32), primary_key=True),  # a service level (app/referrals/escalations.py)
    Column("due_at", BigInteger, primary_key=True),  # microseconds since the epoch
    Index("ix_referral_deadline_due_at", "due_at"),
)

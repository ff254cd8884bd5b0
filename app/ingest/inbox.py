"""The inbound log: a message is committed here, raw, before anything reads it; then its state records what
became of it (processed, failed with an OperationOutcome, or a duplicate of an earlier one)."""

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Row, bindparam, or_, select, update
from sqlalchemy.orm import Session

from app import db
from app.errors import NotFound
from app.ingest.tables import inbound_message
from app.store import dates

RECEIVED, PROCESSED, FAILED, DUPLICATE = "received", "processed", "failed", "duplicate"
STATES = (RECEIVED, PROCESSED, FAILED, DUPLICATE)
ROWS_ADAPTER = "rows"  # an export's rows: a row's control id is its record's key, and a key has versions


@dataclass
class Identity:
    """What parsing told about a message: stored with its state."""

    kind: str | None = None
    control_id: str | None = None
    charset: str | None = None


@dataclass
class Received:
    """A message to store as received."""

    raw: bytes
    source: str
    channel: str
    adapter: str
    kind: str | None = None  # when the sender names it (an export's rows); an HL7 v2 message says its own


@dataclass
class Message:
    """A stored message, as processing reads it."""

    id: int
    source: str
    adapter: str
    kind: str | None
    raw: bytes
    content_hash: str


@dataclass
class Mark:
    """A message's new state."""

    message_id: int
    state: str
    identity: Identity
    error: dict[str, Any] | None = None
    mapping: str | None = None
    resources: list[str] | None = None
    duplicate_of: int | None = None


def record(messages: list[Received]) -> list[Message]:
    """Store messages as received, in one transaction of their own, before anything reads them."""
    now = dates.now()
    hashes = [hashlib.sha256(m.raw).hexdigest() for m in messages]
    rows = [{"source": m.source, "channel": m.channel, "adapter": m.adapter, "kind": m.kind, "received_at": now, "raw": m.raw,
             "content_hash": h, "state": RECEIVED, "attempts": 0} for m, h in zip(messages, hashes, strict=True)]
    with db.transaction() as session:
        ids = db.insert_returning_keys(session, inbound_message, rows)
    return [Message(int(i), m.source, m.adapter, m.kind, m.raw, h) for i, m, h in zip(ids, messages, hashes, strict=True)]


def load(session: Session, message_id: int) -> Row[Any]:
    row = session.execute(select(inbound_message).where(inbound_message.c.id == message_id)).first()
    if row is None:
        raise NotFound(f"inbound message {message_id} is not known", expression=["id"])
    return row


def message(row: Row[Any]) -> Message:
    return Message(row.id, row.source, row.adapter, row.kind, row.raw, row.content_hash)


def earlier_copies(session: Session, messages: list[tuple[Message, Identity]]) -> list[int | None]:
    """For each message, an earlier applied one from the same source that it repeats. Messages with the same bytes
    or the same control id are serialised (locks on those, until commit), so two copies arriving together are not
    both applied, and different messages of one source are applied in parallel. One lock call and one query for
    them all; a copy within the list is the caller's to see (`Applied`).

    HL7 v2: one with the same control id (MSH-10, a resend) or the same bytes. Export rows, whose control id is the
    record's key: the last one applied for that key, if it had the same bytes; so an unchanged row of a daily dump
    is a duplicate, and a row changed back to what it once was is applied again."""
    if not messages:
        return []
    db.lock_keys(session, [key for m, identity in messages for key in _keys(m, identity)])
    hashes = {m.content_hash for m, _ in messages}
    control_ids = {identity.control_id for _, identity in messages if identity.control_id}
    same = db.among(session, inbound_message.c.content_hash, hashes)
    if control_ids:
        same = or_(same, db.among(session, inbound_message.c.control_id, control_ids))
    # no ORDER BY: PostgreSQL would then walk (state, id) through every processed message looking for the first
    found = session.execute(
        select(inbound_message.c.id, inbound_message.c.source, inbound_message.c.content_hash, inbound_message.c.control_id,
               inbound_message.c.processed_at)
        .where(db.among(session, inbound_message.c.source, {m.source for m, _ in messages}), inbound_message.c.state == PROCESSED,
               same)
    ).all()
    earlier: list[int | None] = []
    for m, identity in messages:
        candidates = [row for row in found if row.source == m.source and row.id != m.id]
        if m.adapter == ROWS_ADAPTER and identity.control_id:
            of_key = [row for row in candidates if row.control_id == identity.control_id]
            latest = max(of_key, key=lambda row: (_at(row.processed_at), row.id), default=None)
            earlier.append(int(latest.id) if latest is not None and latest.content_hash == m.content_hash else None)
        else:
            ids = [row.id for row in candidates
                   if row.content_hash == m.content_hash or (identity.control_id and row.control_id == identity.control_id)]
            earlier.append(int(min(ids)) if ids else None)
    return earlier


def _keys(m: Message, identity: Identity) -> list[str]:
    return [f"inbox:{m.source}:bytes:{m.content_hash}", *([f"inbox:{m.source}:id:{identity.control_id}"] if identity.control_id else [])]


def _at(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Applied:
    """What a batch applied so far, by the keys a later copy in the same batch would repeat."""

    by_key: dict[tuple[str, str, str], tuple[int, str]] = field(default_factory=dict)

    def copy_of(self, m: Message, identity: Identity, stored: int | None) -> int | None:
        """The message this one repeats, given the stored one `earlier_copies` found: for an export row, the last
        applied version of its key (this batch's if it has one); for HL7 v2 the first with its bytes or control id."""
        if m.adapter == ROWS_ADAPTER and identity.control_id:
            latest = self.by_key.get((m.source, "key", identity.control_id))
            if latest is None:
                return stored
            return latest[0] if latest[1] == m.content_hash else None
        here = [self.by_key.get((m.source, "bytes", m.content_hash)),
                self.by_key.get((m.source, "id", identity.control_id)) if identity.control_id else None]
        ids = [i for i in (stored, *(h[0] for h in here if h)) if i is not None]
        return min(ids) if ids else None

    def add(self, m: Message, identity: Identity) -> None:
        if m.adapter == ROWS_ADAPTER and identity.control_id:
            self.by_key[(m.source, "key", identity.control_id)] = (m.id, m.content_hash)
            return
        self.by_key.setdefault((m.source, "bytes", m.content_hash), (m.id, m.content_hash))
        if identity.control_id:
            self.by_key.setdefault((m.source, "id", identity.control_id), (m.id, m.content_hash))


def mark(session: Session, marks: list[Mark]) -> None:
    """Record the messages' new states (one statement, run for each)."""
    if not marks:
        return
    now = dates.now()
    session.execute(
        update(inbound_message).where(inbound_message.c.id == bindparam("b_id")).values(
            state=bindparam("b_state"), kind=bindparam("b_kind"), control_id=bindparam("b_control_id"),
            charset=bindparam("b_charset"), error=bindparam("b_error"), mapping=bindparam("b_mapping"),
            resources=bindparam("b_resources"), duplicate_of=bindparam("b_duplicate_of"), processed_at=now,
            attempts=inbound_message.c.attempts + 1),
        [{"b_id": m.message_id, "b_state": m.state, "b_kind": m.identity.kind, "b_control_id": m.identity.control_id,
          "b_charset": m.identity.charset, "b_error": orjson.dumps(m.error).decode() if m.error else None,
          "b_mapping": m.mapping, "b_resources": orjson.dumps(m.resources).decode() if m.resources is not None else None,
          "b_duplicate_of": m.duplicate_of} for m in marks],
    )


def mark_failed(marks: list[Mark]) -> None:
    """Record failures in a transaction of their own (the one that failed, if any, was rolled back)."""
    with db.transaction() as session:
        mark(session, marks)


def listing(session: Session, *, state: str | None = None, source: str | None = None, after: int = 0,
            limit: int = 100) -> list[dict[str, Any]]:
    statement = select(*(c for c in inbound_message.c if c.name != "raw")).where(inbound_message.c.id > after)
    if state:
        statement = statement.where(inbound_message.c.state == state)
    if source:
        statement = statement.where(inbound_message.c.source == source)
    rows = session.execute(statement.order_by(inbound_message.c.id).limit(limit)).all()
    return [summary(row) for row in rows]


def summary(row: Row[Any]) -> dict[str, Any]:
    """A message as the operator sees it (never its content: that holds personal data)."""
    values = row._mapping
    return {
        "id": values["id"], "source": values["source"], "channel": values["channel"], "adapter": values["adapter"],
        "receivedAt": _instant(values["received_at"]), "kind": values["kind"], "controlId": values["control_id"],
        "charset": values["charset"], "state": values["state"], "attempts": values["attempts"],
        "duplicateOf": values["duplicate_of"], "mapping": values["mapping"],
        "processedAt": _instant(values["processed_at"]),
        "resources": orjson.loads(values["resources"]) if values["resources"] else [],
        "error": orjson.loads(values["error"]) if values["error"] else None,
    }


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return dates.instant(moment if moment.tzinfo else moment.replace(tzinfo=UTC))

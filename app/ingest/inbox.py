"""The inbound log: a message is committed here, raw, before anything reads it; then its state records what
became of it (processed, failed with an OperationOutcome, or a duplicate of an earlier one)."""

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Row, insert, or_, select, update
from sqlalchemy.orm import Session

from app import db
from app.errors import NotFound
from app.ingest.tables import inbound_message
from app.store import dates

RECEIVED, PROCESSED, FAILED, DUPLICATE = "received", "processed", "failed", "duplicate"
STATES = (RECEIVED, PROCESSED, FAILED, DUPLICATE)


@dataclass
class Identity:
    """What parsing told about a message: stored with its state."""

    kind: str | None = None
    control_id: str | None = None
    charset: str | None = None


def record(raw: bytes, *, source: str, channel: str, adapter: str, kind: str | None = None) -> int:
    """Store the message as received, in its own transaction; returns its id. `kind` when the sender names it (an
    export's rows); an HL7 v2 message says its own."""
    with db.transaction() as session:
        result = session.execute(insert(inbound_message).values(
            source=source, channel=channel, adapter=adapter, kind=kind, received_at=dates.now(), raw=raw,
            content_hash=hashlib.sha256(raw).hexdigest(), state=RECEIVED, attempts=0,
        ).returning(inbound_message.c.id))
        return int(result.scalar_one())


def load(session: Session, message_id: int) -> Row[Any]:
    row = session.execute(select(inbound_message).where(inbound_message.c.id == message_id)).first()
    if row is None:
        raise NotFound(f"inbound message {message_id} is not known", expression=["id"])
    return row


def earlier_copy(session: Session, row: Row[Any], identity: Identity, *, latest_of_key: bool = False) -> int | None:
    """An earlier applied message from the same source that this one repeats. Messages with the same bytes or the
    same control id are serialised (locks on those, until commit), so two copies arriving together are not both
    applied, and different messages of one source are applied in parallel.

    HL7 v2: one with the same control id (MSH-10, a resend) or the same bytes. Export rows (`latest_of_key`), whose
    control id is the record's key: the last one applied for that key, if it had the same bytes; so an unchanged row
    of a daily dump is a duplicate, and a row changed back to what it once was is applied again."""
    db.lock_keys(session, [f"inbox:{row.source}:bytes:{row.content_hash}",
                           *([f"inbox:{row.source}:id:{identity.control_id}"] if identity.control_id else [])])
    earlier = [inbound_message.c.source == row.source, inbound_message.c.id != row.id, inbound_message.c.state == PROCESSED]
    if latest_of_key and identity.control_id:
        latest = session.execute(
            select(inbound_message.c.id, inbound_message.c.content_hash)
            .where(*earlier, inbound_message.c.control_id == identity.control_id)
            .order_by(inbound_message.c.processed_at.desc(), inbound_message.c.id.desc()).limit(1)
        ).first()
        return int(latest.id) if latest is not None and latest.content_hash == row.content_hash else None
    same = inbound_message.c.content_hash == row.content_hash
    if identity.control_id:
        same = or_(same, inbound_message.c.control_id == identity.control_id)
    # no ORDER BY id LIMIT 1: PostgreSQL then walks (state, id) through every processed message looking for one
    found = session.scalars(select(inbound_message.c.id).where(*earlier, same)).all()
    return min(found) if found else None


def mark(session: Session, message_id: int, state: str, identity: Identity, *, error: dict[str, Any] | None = None,
         mapping: str | None = None, resources: list[str] | None = None, duplicate_of: int | None = None) -> None:
    session.execute(update(inbound_message).where(inbound_message.c.id == message_id).values(
        state=state, kind=identity.kind, control_id=identity.control_id, charset=identity.charset,
        error=orjson.dumps(error).decode() if error else None, mapping=mapping,
        resources=orjson.dumps(resources).decode() if resources is not None else None,
        duplicate_of=duplicate_of, processed_at=dates.now(), attempts=inbound_message.c.attempts + 1,
    ))


def mark_failed(message_id: int, identity: Identity, error: dict[str, Any]) -> None:
    """Record a failure in a transaction of its own (the one that failed was rolled back)."""
    with db.transaction() as session:
        mark(session, message_id, FAILED, identity, error=error)


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

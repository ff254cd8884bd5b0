"""One inbound message (an HL7 v2 message, or one row of a CSV or JSON export), end to end: stored raw (committed)
→ parsed → mapped → applied with its Provenance and its new state in one transaction → acknowledged. A message that
fails keeps its raw bytes and an OperationOutcome saying which field or rule failed, and can be replayed after the mapping, a code table or the source is fixed."""

import logging
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.base import MessageError, SourceRecord
from adapters.hl7v2 import ack as hl7_ack
from adapters.hl7v2 import parse as hl7_parse
from adapters.rows import parse as rows_parse
from app import db
from app.errors import Issue, QiaoError
from app.fhir.outcomes import operation_outcome
from app.ingest import inbox
from app.ingest.sources import Source, by_facility, sources
from app.logging import fields
from app.mapping import engine
from app.store import dates
from app.store import repository as store

log = logging.getLogger("qiao.ingest")
HL7V2, ROWS = "hl7v2", "rows"
UNKNOWN_SOURCE = "unknown"
MESSAGE_SYSTEM = "urn:qiao:inbound-message"
#: FHIR issue type of a failure → HL7 table 0357 condition code in the ACK's ERR segment
_CONDITIONS = {"required": hl7_ack.REQUIRED_FIELD, "value": hl7_ack.DATA_TYPE, "code-invalid": hl7_ack.TABLE_VALUE,
               "structure": hl7_ack.SEGMENT_SEQUENCE, "not-supported": hl7_ack.UNSUPPORTED_TYPE}


@dataclass
class Outcome:
    """What became of a message, and the HL7 acknowledgement code that says so."""

    message_id: int
    state: str
    ack_code: str
    record: SourceRecord | None = None
    text: str = ""
    location: str | None = None
    issue: str | None = None
    resources: list[str] = field(default_factory=list)

    def ack(self) -> bytes:
        condition = None if self.issue is None else _CONDITIONS.get(self.issue, hl7_ack.INTERNAL)
        charset = self.record.charset if self.record and self.record.charset else "utf-8"
        return hl7_ack.acknowledge(self.record, self.ack_code, text=self.text, error_code=condition, location=self.location,
                                   charset=charset, control_id=f"Q{self.message_id}")


def receive_hl7v2(raw: bytes, *, channel: str, source: Source | None = None) -> Outcome:
    """Store, then process, one HL7 v2 message. Without `source` (MLLP), the sender is known by MSH-4."""
    source = source or _sender(raw)
    message_id = inbox.record(raw, source=source.name if source else UNKNOWN_SOURCE, channel=channel, adapter=HL7V2)
    return process(message_id)


def receive_row(raw: bytes, *, kind: str, channel: str, source: Source) -> Outcome:
    """Store, then process, one row of an export (`adapters.rows.parse.split` made it) of the given kind."""
    message_id = inbox.record(raw, source=source.name, channel=channel, adapter=ROWS, kind=kind)
    return process(message_id)


def keep_unreadable(raw: bytes, *, kind: str, channel: str, source: Source, error: MessageError) -> Outcome:
    """A file that cannot even be split into rows (not JSON, no character set fits): kept whole, as failed."""
    message_id = inbox.record(raw, source=source.name, channel=channel, adapter=ROWS, kind=kind)
    return _fail(message_id, inbox.Identity(kind), None, error.message, error.location, error.issue, hl7_ack.ERROR)


def _sender(raw: bytes) -> Source | None:
    try:
        return by_facility(hl7_parse.parse(raw).scope.get("MSH-4.1"))
    except MessageError:
        return None


def process(message_id: int) -> Outcome:
    """Parse, map and apply a stored message (its first time, or a replay); never raises for a bad message."""
    with db.read_session() as session:
        row = inbox.load(session, message_id)
    identity = inbox.Identity(row.kind if row.adapter == ROWS else None)
    record: SourceRecord | None = None
    source = sources().get(row.source)
    try:
        record = _parse(row, source)
        identity = inbox.Identity(record.kind, record.control_id, record.charset)
        if source is None:
            raise MessageError(f"MSH-4 names no configured source (sources file: {row.source!r} unknown)", "MSH-4", "not-supported")
        return _apply(row, record, source, identity)
    except MessageError as error:
        rejected = record is None or error.issue in ("not-supported", "structure") and error.location in ("MSH", "MSH-4", "MSH-9", "MSH-18")
        return _fail(message_id, identity, record, error.message, error.location, error.issue,
                     hl7_ack.REJECTED if rejected else hl7_ack.ERROR)
    except QiaoError as error:
        issue = error.issues[0] if error.issues else None
        location = issue.expression[0] if issue and issue.expression else None
        detail = "; ".join(f"{i.expression[0] if i.expression else ''}: {i.diagnostics}" for i in error.issues) or error.message
        return _fail(message_id, identity, record, f"{error.message}: {detail}", location, "value", hl7_ack.ERROR)
    except Exception as error:  # noqa: BLE001 - a message must never vanish: keep it as failed, say so, go on
        log.exception("ingest.failed", extra=fields(inbox_id=message_id, error=type(error).__name__))
        return _fail(message_id, identity, record, f"internal error ({type(error).__name__}); the message is kept",
                     None, "exception", hl7_ack.ERROR)


def _parse(row: Any, source: Source | None) -> SourceRecord:
    charset = source.charset if source else None
    if row.adapter == ROWS:
        return rows_parse.parse(row.raw, kind=row.kind, default_charset=charset)
    return hl7_parse.parse(row.raw, default_charset=charset)


def _apply(row: Any, record: SourceRecord, source: Source, identity: inbox.Identity) -> Outcome:
    mapping = engine.find(row.adapter, record.kind, where="MSH-9" if row.adapter == HL7V2 else "kind")
    if mapping.key:
        identity = replace(identity, control_id=engine.record_key(mapping, record))
    with db.transaction() as session:
        earlier = inbox.earlier_copy(session, row, identity, latest_of_key=row.adapter == ROWS)
        if earlier is not None:
            inbox.mark(session, row.id, inbox.DUPLICATE, identity, duplicate_of=earlier)
            log.info("ingest.duplicate", extra=fields(inbox_id=row.id, duplicate_of=earlier))
            return Outcome(row.id, inbox.DUPLICATE, hl7_ack.ACCEPTED, record, f"duplicate of message {earlier}; not applied again")
        produced = engine.apply(mapping, record, source.mapping_attributes())
        writes = _plan(session, produced, source)
        stored = store.apply(session, [*writes, _provenance(row, record, source, mapping, writes)])
        references = [s.reference for s in stored]
        inbox.mark(session, row.id, inbox.PROCESSED, identity, mapping=mapping.label, resources=references)
    log.info("ingest.processed", extra=fields(inbox_id=row.id, kind=record.kind, resources=len(references)))
    return Outcome(row.id, inbox.PROCESSED, hl7_ack.ACCEPTED, record, resources=references)


def _plan(session: Any, produced: list[engine.Produced], source: Source) -> list[store.Write]:
    found: dict[tuple[str, str], store.Current] = {}
    for resource_type in dict.fromkeys(item.resource_type for item in produced):  # one query (and lock) per type
        ids = [item.resource_id for item in produced if item.resource_type == resource_type]
        found.update(((resource_type, i), c) for i, c in store.current_many(session, resource_type, ids, lock=True).items())
    writes = []
    for item in produced:
        current = found.get((item.resource_type, item.resource_id))
        exists = current is not None and not current.deleted
        if (item.create_only and exists) or (item.amend and not exists):
            continue
        content = item.content
        if item.amend:
            content = {**(store.content(session, item.resource_type, item.resource_id) or {}), **item.content}
        store.prepare(item.resource_type, content, expected_id=item.resource_id)
        writes.append(store.Write(item.resource_type, item.resource_id, "PUT", content, current, org=source.organization))
    return writes


def _provenance(row: Any, record: SourceRecord, source: Source, mapping: engine.Mapping, writes: list[store.Write]) -> store.Write:
    """Which message, from which source, through which mapping version made these resources."""
    content: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": f"{w.resource_type}/{w.resource_id}"} for w in writes] or [{"display": "nothing changed"}],
        "recorded": dates.instant(dates.now()),
        "policy": [f"urn:qiao:mapping:{mapping.label}"],
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}]},
        "agent": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
             "who": {"reference": f"Organization/{source.organization}"}},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler"}]},
             "who": {"display": "Qiao"}},
        ],
        "entity": [{"role": "source", "what": {
            "identifier": {"system": MESSAGE_SYSTEM, "value": str(row.id)},
            "display": f"{source.name} {record.kind} {record.control_id or ''}".strip()}}],
    }
    return store.Write("Provenance", str(uuid.uuid4()), "POST", content, None, org=source.organization)


def _fail(message_id: int, identity: inbox.Identity, record: SourceRecord | None, text: str, location: str | None,
          issue: str, code: str) -> Outcome:
    outcome = operation_outcome([Issue("error", issue, text, [location] if location else [])])
    inbox.mark_failed(message_id, identity, outcome)
    log.warning("ingest.rejected" if code == hl7_ack.REJECTED else "ingest.failed",
                extra=fields(inbox_id=message_id, kind=identity.kind, issue=issue, location=location))
    return Outcome(message_id, inbox.FAILED, code, record, text, location, issue)

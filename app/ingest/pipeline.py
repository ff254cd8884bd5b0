"""Inbound messages (HL7 v2 messages, or rows of a CSV or JSON export), end to end: stored raw (committed) → parsed →
mapped → applied with their Provenance and their new states in one transaction → acknowledged. Messages arriving
together go together (a file's, or those MLLP connections sent while the last batch was applied): a batch costs a
few statements, not a few per message. A message that fails keeps its raw bytes and an OperationOutcome saying
which field or rule failed, and can be replayed after the mapping, a code table or the source is fixed."""

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
HL7V2, ROWS = "hl7v2", inbox.ROWS_ADAPTER
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


@dataclass
class Inbound:
    """A message as it arrives: its bytes, and the source when the channel knows it (HTTP, files); MLLP leaves it
    to MSH-4. `kind` for an export's row (the file names it)."""

    raw: bytes
    channel: str
    adapter: str = HL7V2
    source: Source | None = None
    kind: str | None = None


@dataclass
class _Work:
    """One message through processing: what is known of it so far, and in the end its outcome."""

    message: inbox.Message
    source: Source | None
    record: SourceRecord | None = None
    identity: inbox.Identity = field(default_factory=inbox.Identity)
    mapping: engine.Mapping | None = None
    produced: list[engine.Produced] = field(default_factory=list)
    error: Exception | None = None  # why it cannot be applied, decided once it is known not to be a duplicate
    outcome: Outcome | None = None


def receive(messages: list[Inbound]) -> list[Outcome]:
    """Store messages raw (one commit), then process them together (`_process`); outcomes in the same order.

    Senders that wait for each acknowledgement (MLLP) give a few messages at a time; a file gives many. Either
    way a batch costs a few statements, not a few per message."""
    records: list[SourceRecord | MessageError | None] = []
    sources_of: list[Source | None] = []
    for item in messages:
        source, record = _read(item)
        sources_of.append(source)
        records.append(record)
    stored = inbox.record([inbox.Received(m.raw, s.name if s else UNKNOWN_SOURCE, m.channel, m.adapter, m.kind)
                           for m, s in zip(messages, sources_of, strict=True)])
    works = []
    for message, source, record in zip(stored, sources_of, records, strict=True):
        work = _Work(message, source, record if isinstance(record, SourceRecord) else None)
        work.error = record if isinstance(record, MessageError) else None
        works.append(work)
    return _process(works)


def keep_unreadable(raw: bytes, *, kind: str, channel: str, source: Source, error: MessageError) -> Outcome:
    """A file that cannot even be split into rows (not JSON, no character set fits): kept whole, as failed."""
    [message] = inbox.record([inbox.Received(raw, source.name, channel, ROWS, kind)])
    work = _Work(message, source, identity=inbox.Identity(kind))
    _fail(work, error.message, error.location, error.issue, hl7_ack.ERROR)
    inbox.mark_failed([_failure_mark(work)])
    _log_failure(work)
    assert work.outcome is not None
    return work.outcome


def process(message_id: int) -> Outcome:
    """Parse, map and apply a stored message again (a replay); never raises for a bad message."""
    with db.read_session() as session:
        message = inbox.message(inbox.load(session, message_id))
    return _process([_Work(message, sources().get(message.source))])[0]


def _read(item: Inbound) -> tuple[Source | None, SourceRecord | MessageError | None]:
    """The sender and the parsed record (or why it cannot be parsed). An export's row is parsed later: its source
    is known. An HL7 v2 message without a source names its sender in MSH-4; it is parsed again only when that
    sender's default character set would read it otherwise."""
    if item.adapter != HL7V2:
        return item.source, None
    source = item.source
    try:
        record = hl7_parse.parse(item.raw, default_charset=source.charset if source else None)
    except MessageError as error:
        return source, error
    except Exception:  # noqa: BLE001 - store it first whatever happens: processing parses it again and says why
        return source, None
    if source is None:
        source = by_facility(record.scope.get("MSH-4.1"))
        if source is not None and source.charset and source.charset != record.charset:
            return source, None
    return source, record


def _process(works: list[_Work]) -> list[Outcome]:
    """Parse and map each message (pure work, outside the transaction), then apply all that map in one
    transaction. A message that fails alone (bad field, unknown code, invalid resource) is kept as failed and
    the others go through. If the transaction fails as a whole (a deadlock, a rule refusing a write), each
    message is processed alone, so one cannot hold back the rest."""
    for work in works:
        if work.outcome is None and work.error is None:
            _prepare(work)
    ready = [w for w in works if w.outcome is None]
    later: list[_Work] = []
    if ready:
        try:
            later = _apply(ready)
        except Exception as error:  # noqa: BLE001 - a message must never vanish: keep it as failed, say so, go on
            if len(works) > 1:
                return [_process([_Work(w.message, w.source)])[0] for w in works]
            work = works[0]
            log.exception("ingest.failed", extra=fields(inbox_id=work.message.id, error=type(error).__name__))
            _fail(work, f"internal error ({type(error).__name__}); the message is kept", None, "exception", hl7_ack.ERROR)
            inbox.mark_failed([_failure_mark(work)])
    for work in later:  # it touches what an earlier message of the batch wrote: applied alone, after it
        work.outcome = _process([_Work(work.message, work.source)])[0]
    outcomes = []
    for work in works:
        assert work.outcome is not None
        outcomes.append(work.outcome)
    return outcomes


def _prepare(work: _Work) -> None:
    """Parse (unless done on receipt) and map; a failure is noted in `work.error`, to be reported once the message
    is known not to repeat an applied one."""
    message = work.message
    work.identity = inbox.Identity(message.kind if message.adapter == ROWS else None)
    try:
        if work.record is None:
            work.record = _parse(message, work.source)
        work.identity = inbox.Identity(work.record.kind, work.record.control_id, work.record.charset)
        if work.source is None:
            raise MessageError(f"MSH-4 names no configured source (sources file: {message.source!r} unknown)", "MSH-4", "not-supported")
        work.mapping = engine.find(message.adapter, work.record.kind, where="MSH-9" if message.adapter == HL7V2 else "kind")
        if work.mapping.key:
            work.identity = replace(work.identity, control_id=engine.record_key(work.mapping, work.record))
        work.produced = engine.apply(work.mapping, work.record, work.source.mapping_attributes())
    except (MessageError, QiaoError) as error:
        work.error = error
    except Exception as error:  # noqa: BLE001 - a bug in a mapping function: this message fails, the others go on
        log.exception("ingest.failed", extra=fields(inbox_id=message.id, error=type(error).__name__))
        work.error = error


def _parse(message: inbox.Message, source: Source | None) -> SourceRecord:
    charset = source.charset if source else None
    if message.adapter == ROWS:
        assert message.kind is not None  # the file's kind, stored with each row
        return rows_parse.parse(message.raw, kind=message.kind, default_charset=charset)
    return hl7_parse.parse(message.raw, default_charset=charset)


def _apply(works: list[_Work]) -> list[_Work]:
    """Apply the batch in one transaction: each message is a duplicate, failed (nothing of it written), or applied
    with its Provenance. Every message is planned against the resources as they were before the batch, so one that
    writes a resource an earlier one of the batch writes is left for later (returned), to be applied after it."""
    later: list[_Work] = []
    with db.transaction() as session:
        earlier = inbox.earlier_copies(session, [(w.message, w.identity) for w in works])
        claimed: set[tuple[str, str]] = set()
        found = _current(session, [w for w in works if w.error is None])
        applied = inbox.Applied()
        writes: list[store.Write] = []
        counts: list[tuple[_Work, int]] = []
        marks: list[inbox.Mark] = []
        for work, stored_copy in zip(works, earlier, strict=True):
            copy = applied.copy_of(work.message, work.identity, stored_copy)
            if copy is not None:
                _duplicate(work, copy)
                marks.append(inbox.Mark(work.message.id, inbox.DUPLICATE, work.identity, duplicate_of=copy))
                continue
            if work.error is not None:
                _failed(work, work.error)
                marks.append(_failure_mark(work))
                continue
            try:
                planned = _plan(session, work, found)  # read as before the batch: see `later`
            except (MessageError, QiaoError) as error:  # raised before any write of this message
                _failed(work, error)
                marks.append(_failure_mark(work))
                continue
            keys = {(w.resource_type, w.resource_id) for w in planned}
            if keys & claimed:
                later.append(work)
                work.outcome = Outcome(work.message.id, inbox.RECEIVED, hl7_ack.ACCEPTED)  # replaced when applied
                continue
            claimed |= keys
            applied.add(work.message, work.identity)
            assert work.source is not None and work.record is not None and work.mapping is not None
            writes += [*planned, _provenance(work.message, work.record, work.source, work.mapping, planned)]
            counts.append((work, len(planned) + 1))
        stored = store.apply(session, writes)
        position = 0
        for work, count in counts:
            references = [s.reference for s in stored[position:position + count]]
            position += count
            assert work.record is not None and work.mapping is not None
            work.outcome = Outcome(work.message.id, inbox.PROCESSED, hl7_ack.ACCEPTED, work.record, resources=references)
            marks.append(inbox.Mark(work.message.id, inbox.PROCESSED, work.identity, mapping=work.mapping.label, resources=references))
        inbox.mark(session, marks)
    for work in works:
        if work.outcome is not None and work.outcome.state == inbox.FAILED:
            _log_failure(work)
        elif work.outcome is not None and work.outcome.state == inbox.PROCESSED:
            log.info("ingest.processed", extra=fields(inbox_id=work.message.id, kind=work.identity.kind, resources=len(work.outcome.resources)))
    return later


def _current(session: Any, works: list[_Work]) -> dict[tuple[str, str], store.Current]:
    """The current versions of every resource the messages make, read and locked in one query per type."""
    found: dict[tuple[str, str], store.Current] = {}
    produced = [item for work in works for item in work.produced]
    for resource_type in dict.fromkeys(item.resource_type for item in produced):
        ids = [item.resource_id for item in produced if item.resource_type == resource_type]
        found.update(((resource_type, i), c) for i, c in store.current_many(session, resource_type, ids, lock=True).items())
    return found


def _duplicate(work: _Work, copy: int) -> None:
    log.info("ingest.duplicate", extra=fields(inbox_id=work.message.id, duplicate_of=copy))
    work.outcome = Outcome(work.message.id, inbox.DUPLICATE, hl7_ack.ACCEPTED, work.record, f"duplicate of message {copy}; not applied again")


def _failed(work: _Work, error: Exception) -> None:
    """Note why the message failed: which field or rule, and whether the sender should not send it again (AR)."""
    if isinstance(error, MessageError):
        rejected = work.record is None or error.issue in ("not-supported", "structure") and error.location in ("MSH", "MSH-4", "MSH-9", "MSH-18")
        _fail(work, error.message, error.location, error.issue, hl7_ack.REJECTED if rejected else hl7_ack.ERROR)
        return
    if not isinstance(error, QiaoError):
        _fail(work, f"internal error ({type(error).__name__}); the message is kept", None, "exception", hl7_ack.ERROR)
        return
    issue = error.issues[0] if error.issues else None
    location = issue.expression[0] if issue and issue.expression else None
    detail = "; ".join(f"{i.expression[0] if i.expression else ''}: {i.diagnostics}" for i in error.issues) or error.message
    _fail(work, f"{error.message}: {detail}", location, "value", hl7_ack.ERROR)


def _plan(session: Any, work: _Work, found: dict[tuple[str, str], store.Current]) -> list[store.Write]:
    assert work.source is not None
    writes = []
    for item in work.produced:
        current = found.get((item.resource_type, item.resource_id))
        exists = current is not None and not current.deleted
        if (item.create_only and exists) or (item.amend and not exists):
            continue
        content = item.content
        if item.amend:
            content = {**(store.content(session, item.resource_type, item.resource_id) or {}), **item.content}
        store.prepare(item.resource_type, content, expected_id=item.resource_id)
        writes.append(store.Write(item.resource_type, item.resource_id, "PUT", content, current, org=work.source.organization))
    return writes


def _provenance(message: inbox.Message, record: SourceRecord, source: Source, mapping: engine.Mapping, writes: list[store.Write]) -> store.Write:
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
            "identifier": {"system": MESSAGE_SYSTEM, "value": str(message.id)},
            "display": f"{source.name} {record.kind} {record.control_id or ''}".strip()}}],
    }
    return store.Write("Provenance", str(uuid.uuid4()), "POST", content, None, org=source.organization)


def _fail(work: _Work, text: str, location: str | None, issue: str, code: str) -> None:
    work.outcome = Outcome(work.message.id, inbox.FAILED, code, work.record, text, location, issue)


def _failure_mark(work: _Work) -> inbox.Mark:
    assert work.outcome is not None
    outcome = operation_outcome([Issue("error", work.outcome.issue or "exception", work.outcome.text,
                                       [work.outcome.location] if work.outcome.location else [])])
    return inbox.Mark(work.message.id, inbox.FAILED, work.identity, error=outcome)


def _log_failure(work: _Work) -> None:
    assert work.outcome is not None
    log.warning("ingest.rejected" if work.outcome.ack_code == hl7_ack.REJECTED else "ingest.failed",
                extra=fields(inbox_id=work.message.id, kind=work.identity.kind, issue=work.outcome.issue, location=work.outcome.location))

"""AuditEvents (FHIR R4, after IHE BALP) for every access to patient data, and the queue of read audits.

Writes are audited in their own transaction (app/store/repository.py). Reads, searches and refusals are queued here
and written in batches by app/auth/audit_store.py a fraction of a second later, so that auditing a read costs the
read no database round trip; a hard crash can lose the last batch (README: Audit trail). In a batch, accesses that
differ only in what they touched and when (same client, organization, address, purpose, interaction and outcome)
become one AuditEvent whose `period` spans them and whose entities name everything they touched: a hospital
reading a thousand records a second writes a few events a second, not a thousand.
"""

import base64
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.auth.principal import EMERGENCY, Principal
from app.store import dates

AUDIT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ENTITY_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
CLIENT_SYSTEM = "urn:qiao:client"

#: AuditEvent.action for each RESTful interaction
ACTIONS = {"create": "C", "read": "R", "vread": "R", "search": "E", "history": "R", "update": "U", "patch": "U", "delete": "D",
           "export": "R"}
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"


def event(
    principal: Principal,
    interaction: str,
    *,
    resources: Iterable[str] = (),
    patients: Iterable[str] = (),
    queries: Iterable[str] = (),
    outcome: str = SUCCESS,
    description: str | None = None,
    recorded: datetime | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    """One AuditEvent: who (client and its Organization), why (purpose of use), what (resources, residents,
    queries); `since` when it stands for several accesses, the first of them (`period`)."""
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": principal.client_id}},
        "requestor": True,
        "purposeOfUse": [_purpose(principal.purpose)],
    }
    if principal.organization:
        agent["who"]["reference"] = f"Organization/{principal.organization}"
    if principal.address:
        agent["network"] = {"address": principal.address, "type": "2"}
    entities: list[dict[str, Any]] = [
        {"what": {"reference": f"Patient/{p}"}, "type": _coding(ENTITY_TYPE_SYSTEM, "1"), "role": _coding(ENTITY_ROLE_SYSTEM, "1")}
        for p in sorted(set(patients))
    ]
    entities += [{"what": {"reference": r}, "type": _coding(ENTITY_TYPE_SYSTEM, "2")} for r in dict.fromkeys(resources)]
    entities += [{"type": _coding(ENTITY_TYPE_SYSTEM, "2"), "role": _coding(ENTITY_ROLE_SYSTEM, "24"),
                  "query": base64.b64encode(query.encode()).decode()} for query in dict.fromkeys(queries)]
    recorded = recorded or dates.now()
    audit: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding(AUDIT_TYPE_SYSTEM, "rest"),
        "subtype": [_coding(INTERACTION_SYSTEM, interaction)],
        "action": ACTIONS.get(interaction, "E"),
        "recorded": dates.instant(recorded),
        "outcome": outcome,
        "purposeOfEvent": [_purpose(principal.purpose)],
        "agent": [agent],
        "source": {"observer": {"display": "Qiao"}, "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4")]},
    }
    if since is not None:
        audit["period"] = {"start": dates.instant(since), "end": dates.instant(recorded)}
    if description:
        audit["outcomeDesc"] = description
    if entities:
        audit["entity"] = entities
    if principal.purpose in EMERGENCY:
        audit["meta"] = {"security": [{"system": PURPOSE_SYSTEM, "code": "BTG", "display": "break the glass"}]}
    return audit


def _coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def _purpose(code: str) -> dict[str, Any]:
    return {"coding": [{"system": PURPOSE_SYSTEM, "code": code}]}


#: At most this many accesses are audited by one AuditEvent.
COMBINE_LIMIT = 500


@dataclass(frozen=True)
class Access:
    """A read, search or refusal waiting to be audited."""

    principal: Principal
    interaction: str
    resources: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    query: str | None = None
    outcome: str = SUCCESS
    description: str | None = None
    moment: datetime = field(default_factory=dates.now)


def record(principal: Principal, interaction: str, *, resources: Iterable[str] = (), patients: Iterable[str] = (),
           query: str | None = None, outcome: str = SUCCESS, description: str | None = None) -> None:
    """Queue an access for the audit writer (the caller does no I/O)."""
    queue.put(Access(principal, interaction, tuple(resources), tuple(patients), query, outcome, description))


def events(accesses: Iterable[Access]) -> list[dict[str, Any]]:
    """The AuditEvents for a batch of accesses: one per run of accesses that differ only in what and when."""
    groups: dict[tuple[Any, ...], list[list[Access]]] = {}
    ordered: list[list[Access]] = []
    for access in accesses:
        chunks = groups.setdefault((access.principal, access.interaction, access.outcome, access.description), [])
        if not chunks or len(chunks[-1]) >= COMBINE_LIMIT:
            chunks.append([])
            ordered.append(chunks[-1])
        chunks[-1].append(access)
    return [_event_of(group) for group in ordered]


def _event_of(group: list[Access]) -> dict[str, Any]:
    first, moments = group[0], [a.moment for a in group]
    return event(
        first.principal, first.interaction, outcome=first.outcome, description=first.description,
        resources=[r for a in group for r in a.resources], patients=[p for a in group for p in a.patients],
        queries=[a.query for a in group if a.query is not None],
        recorded=max(moments), since=min(moments) if len(group) > 1 else None,
    )


class Queue:
    """Accesses waiting to be audited; thread-safe, drained by the audit writer."""

    def __init__(self) -> None:
        self._events: list[Access] = []
        self._lock = threading.Lock()

    def put(self, access: Access) -> None:
        with self._lock:
            self._events.append(access)

    def put_back(self, accesses: list[Access]) -> None:
        """Return accesses that could not be written, to be tried again first."""
        with self._lock:
            self._events[:0] = accesses

    def take(self, limit: int = 5000) -> list[Access]:
        with self._lock:
            taken, self._events = self._events[:limit], self._events[limit:]
        return taken

    def __len__(self) -> int:
        return len(self._events)


queue = Queue()

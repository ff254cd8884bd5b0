"""AuditEvents (FHIR R4, after IHE BALP) for every access to patient data, and the queue of read audits.

Writes are audited in their own transaction (app/store/repository.py). Reads, searches and refusals are queued here
and written in batches by app/auth/audit_store.py a fraction of a second later, so that auditing a read costs the
read no database round trip; a hard crash can lose the last batch (README: Audit trail).
"""

import base64
import threading
from collections.abc import Iterable
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
    query: str | None = None,
    outcome: str = SUCCESS,
    description: str | None = None,
    recorded: datetime | None = None,
) -> dict[str, Any]:
    """One AuditEvent: who (client and its Organization), why (purpose of use), what (resources, residents, query)."""
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
    if query is not None:
        entities.append({"type": _coding(ENTITY_TYPE_SYSTEM, "2"), "role": _coding(ENTITY_ROLE_SYSTEM, "24"),
                         "query": base64.b64encode(query.encode()).decode()})
    audit: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding(AUDIT_TYPE_SYSTEM, "rest"),
        "subtype": [_coding(INTERACTION_SYSTEM, interaction)],
        "action": ACTIONS.get(interaction, "E"),
        "recorded": dates.instant(recorded or dates.now()),
        "outcome": outcome,
        "purposeOfEvent": [_purpose(principal.purpose)],
        "agent": [agent],
        "source": {"observer": {"display": "Qiao"}, "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4")]},
    }
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


class Queue:
    """Audit events waiting to be written; thread-safe, drained by the audit writer."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def put(self, audit: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(audit)

    def put_back(self, events: list[dict[str, Any]]) -> None:
        """Return events that could not be written, to be tried again first."""
        with self._lock:
            self._events[:0] = events

    def take(self, limit: int = 2000) -> list[dict[str, Any]]:
        with self._lock:
            taken, self._events = self._events[:limit], self._events[limit:]
        return taken

    def __len__(self) -> int:
        return len(self._events)


queue = Queue()

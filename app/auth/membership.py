"""A stored Group's members, shown only as far as the reader may see those residents.

The policy shows a Group to every client, since it is about no one resident; its member list, though, says who is in
a cohort (a clinic's patients, a screening list), which is itself about each of them. So a restricted reader gets
the Group with only the members it may see (the same rule as for their own records: app/auth/policy.py), labelled
REDACTED when some were left out. The registry Groups are composed per reader already (app/cdc/registries.py).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import policy
from app.auth.principal import Principal
from app.auth.relations import reference_id
from app.db import among
from app.store.tables import resource

REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED", "display": "redacted"}


class Shown(Protocol):
    resource_type: str
    content: str | None


@dataclass
class _Resident:
    """A member Patient as the policy judges it: by who sent the record and whom it is about."""

    resource_type: str
    org: str | None
    patient: str | None


def mask(session: Session, principal: Principal, shown: Sequence[Shown]) -> None:
    """Leave out of each Group in `shown` (changed in place) the member Patients the principal may not see."""
    groups = [item for item in shown if item.resource_type == "Group" and item.content]
    for item, content in zip(groups, masked(session, principal, [item.content or "" for item in groups]), strict=True):
        item.content = content


def masked(session: Session, principal: Principal, groups: list[str]) -> list[str]:
    """The Groups (JSON text) with only the member Patients the principal may see; the others as they were."""
    if principal.unrestricted:
        return groups
    parsed = {i: orjson.loads(text) for i, text in enumerate(groups) if '"member"' in text}
    parsed = {i: content for i, content in parsed.items() if content.get("member")}
    if not parsed:
        return groups
    ids = {i for content in parsed.values() for i in map(_member_patient, content["member"]) if i}
    rows = session.connection().execute(
        select(resource.c.res_id, resource.c.org, resource.c.patient).where(resource.c.res_type == "Patient",
                                                                            among(session, resource.c.res_id, sorted(ids)))
    ).all() if ids else []
    residents = {row.res_id: _Resident("Patient", row.org, row.patient or row.res_id) for row in rows}
    seen = dict(zip(residents, policy.visible(session, principal, list(residents.values())), strict=True))
    result = list(groups)
    for i, content in parsed.items():
        kept = [m for m in content["member"] if seen.get(_member_patient(m) or "", True)]
        if len(kept) == len(content["member"]):
            continue
        if kept:
            content["member"] = kept
        else:
            del content["member"]
        meta = content.setdefault("meta", {})
        meta["security"] = [*meta.get("security", []), REDACTED]
        result[i] = orjson.dumps(content).decode()
    return result


def _member_patient(member: Any) -> str | None:
    return reference_id(member.get("entity"), "Patient") if isinstance(member, dict) else None

"""The access decisions: scopes per interaction, and the institution policy (policy.yaml) as one rule applied two
ways, to rows already read (`visible`) and inside search SQL (`visible_sql`). The two must agree; a test checks it."""

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Protocol

from sqlalchemy import BindParameter, ColumnElement, bindparam, exists, literal, or_, select, union_all
from sqlalchemy.orm import Session

from app.auth.principal import ALL, SYSTEM, Principal
from app.auth.relations import policy_data
from app.auth.tables import care_relation, consent_denial
from app.errors import Forbidden
from app.store.query import Sql

AUDIT_TYPE = "AuditEvent"
_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


class Owned(Protocol):
    resource_type: str
    org: str | None
    patient: str | None


def principal_of(session: Session) -> Principal:
    """The principal a unit of work runs for; the server itself when none was set (jobs, tests of the store)."""
    principal: Principal = session.info.get("principal", SYSTEM)
    return principal


@cache
def private_types() -> frozenset[str]:
    return frozenset(policy_data()["organization_private"])


def require(principal: Principal, resource_type: str, interaction: str) -> None:
    """Raise Forbidden unless the scopes allow `interaction` (one of c r u d s) on `resource_type`."""
    if principal.unrestricted:
        return
    if resource_type == AUDIT_TYPE and interaction in "cud":
        raise Forbidden("AuditEvents are written by the server only and cannot be changed", expression=[AUDIT_TYPE])
    if not may(principal, resource_type, interaction):
        raise Forbidden(
            f"the token's scopes do not allow {_NAMES[interaction]} on {resource_type}"
            f" (needs system/{resource_type}.{interaction})",
            expression=[resource_type],
        )


def readable_types(principal: Principal) -> tuple[set[str] | None, bool]:
    """(types the principal may read, None for all; whether AuditEvents are among them) for system-wide history.
    The audit trail joins the clinical history only for a token that names it."""
    audit_events = principal.scopes.allows_explicitly(AUDIT_TYPE, "r")
    return (None if principal.unrestricted else principal.scopes.types_allowed("r")), audit_events


def may(principal: Principal, resource_type: str, interaction: str) -> bool:
    """Whether the scopes allow `interaction` on `resource_type`; the audit trail only by a scope that names it."""
    if principal.unrestricted:
        return True
    if resource_type == AUDIT_TYPE:
        return principal.scopes.allows_explicitly(AUDIT_TYPE, interaction)
    return principal.scopes.allows(resource_type, interaction)


def visible(session: Session, principal: Principal, rows: Sequence[Owned]) -> list[bool]:
    """For each row, whether the principal may see it (one query for the whole batch)."""
    return visible_to_each(session, [principal], rows)[0]


def visible_to_each(session: Session, principals: Sequence[Principal], rows: Sequence[Owned]) -> list[list[bool]]:
    """`visible` for several principals at once (the subscribers to a change): one query however many there are.
    A master resident's facts are its source records' (app/mpi/facts.py keeps them as the master's own rows)."""
    restricted = [p for p in principals if not p.unrestricted]
    orgs = {p.organization or "" for p in restricted}
    private = private_types()
    patients = {r.patient for r in rows if r.patient and r.resource_type not in private and any(r.org != o for o in orgs)}
    denied: set[tuple[str, str]] = set()
    caring: set[tuple[str, str]] = set()
    if patients:
        denying = consent_denial.c.org_id.in_([*orgs, "*"])
        facts = [select(consent_denial.c.patient_id, consent_denial.c.org_id, literal("denied").label("fact"))
                 .where(consent_denial.c.patient_id.in_(patients), denying)]
        carers = {p.organization or "" for p in restricted if not p.every_resident}
        if carers:
            facts.append(select(care_relation.c.patient_id, care_relation.c.org_id, literal("caring"))
                         .where(care_relation.c.patient_id.in_(patients), care_relation.c.org_id.in_(carers)))
        for patient_id, org_id, fact in session.connection().execute(union_all(*facts)):
            (denied if fact == "denied" else caring).add((patient_id, org_id))

    def seen(principal: Principal, row: Owned) -> bool:
        org = principal.organization or ""
        return decide(principal, row, denied=(row.patient, org) in denied or (row.patient, "*") in denied,
                      caring=(row.patient, org) in caring)

    return [[seen(principal, row) for row in rows] for principal in principals]


#: Bound to the principal's organization when the facts are read with the row (`fact_columns`).
ORGANIZATION: BindParameter[str] = bindparam("policy_org")


def fact_columns(patient: ColumnElement[str]) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """`denied` and `caring` for the resident in column `patient`, to read the policy's facts in the same query as
    the row itself (a single read then costs one round trip, as without a policy)."""
    denying = or_(consent_denial.c.org_id == ORGANIZATION, consent_denial.c.org_id == "*")
    denied = exists().where(consent_denial.c.patient_id == patient, denying)
    caring = exists().where(care_relation.c.patient_id == patient, care_relation.c.org_id == ORGANIZATION)
    return denied.label("denied"), caring.label("caring")


def decide(principal: Principal, row: Owned, *, denied: bool, caring: bool) -> bool:
    """The rule itself, given whether a consent denies this organization the row's resident and whether it cares
    for them."""
    if principal.unrestricted:
        return True
    own = row.org is not None and row.org == principal.organization
    if row.resource_type in private_types():
        return own or principal.access == ALL
    if row.patient is None or own:
        return True
    if denied:
        return False
    return principal.every_resident or caring


def require_visible(session: Session, principal: Principal, row: Owned, reference: str, *,
                    facts: tuple[bool, bool] | None = None) -> None:
    """Raise Forbidden unless the principal may see the row; `facts` (denied, caring) when read with it."""
    seen = decide(principal, row, denied=facts[0], caring=facts[1]) if facts else visible(session, principal, [row])[0]
    if not seen:
        raise Forbidden(
            f"{reference} belongs to another organization's resident who is not in {principal.organization}'s care"
            " (or whose consent denies sharing)",
            expression=[row.resource_type],
        )


def require_writable(session: Session, principal: Principal, row: Owned, reference: str) -> None:
    """Change only your own organization's data, or shared-writable data you can see (the Task you received)."""
    if principal.unrestricted or (row.org is not None and row.org == principal.organization):
        return
    if row.resource_type in policy_data()["shared_writable"]:
        require_visible(session, principal, row, reference)
        return
    raise Forbidden(f"{reference} was sent by another organization; only its sender may change it", expression=[row.resource_type])


def visible_sql(sql: Sql, principal: Principal, alias: str, resource_types: Iterable[str] | None) -> str | None:
    """The same rule as `visible`, as a condition on the `resource` row `alias`; None when nothing is filtered.

    `resource_types` are the types the rows can have (None: any), so that a search of one type gets the plain form.
    """
    if principal.unrestricted:
        return None
    org = sql.param(principal.organization or "")
    own = f"{alias}.org = {org}"
    private_rule = "TRUE" if principal.access == ALL else own
    denied = f"EXISTS (SELECT 1 FROM consent_denial d WHERE d.patient_id = {alias}.patient AND d.org_id IN ({org}, '*'))"
    caring = "TRUE" if principal.every_resident else (
        f"EXISTS (SELECT 1 FROM care_relation c WHERE c.patient_id = {alias}.patient AND c.org_id = {org})")
    shared_rule = f"({alias}.patient IS NULL OR {own} OR (NOT {denied} AND {caring}))"
    private = private_types()
    types = set(resource_types) if resource_types is not None else None
    if types is not None and types <= private:
        return f"({private_rule})"
    if types is not None and not types & private:
        return shared_rule
    names = ", ".join(sql.name(t) for t in sorted(private))
    return f"(({alias}.res_type IN ({names}) AND {private_rule}) OR ({alias}.res_type NOT IN ({names}) AND {shared_rule}))"

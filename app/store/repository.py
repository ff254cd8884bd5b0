"""ResourceStore: the FHIR interactions over the versioned tables, written once for routes, bundles and adapters.

Writes are planned (`Write`) and applied in batches by `apply`: one insert per table for a whole transaction
Bundle. The stored JSON is the validated input with `id` and `meta` set by the server, and it is served as stored.

Every entry point checks the session's principal (app/auth/policy.py): scopes per interaction, the institution
policy on what it reads and changes, and the policy's filter inside search SQL. Writes are audited in the same
transaction; reads and searches are queued for the audit writer.
"""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jsonpatch
import orjson
from sqlalchemy import Row, Select, and_, bindparam, false, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from app.auth import audit_trail, membership, policy, relations
from app.auth.principal import SYSTEM, Principal
from app.auth.tables import audit_pending, care_relation, consent_denial
from app.config import get_settings
from app.db import among, bulk_insert, insert_returning_keys, lock_key, write_rows
from app.errors import Conflict, Forbidden, Gone, InvalidRequest, NotFound, PreconditionFailed
from app.fhir import resources
from app.fhir import search as fhir_search
from app.fhir.search import SearchRequest
from app.store import dates, query, rules
from app.store.indexing import index_rows
from app.store.search_parameters import parameter_type
from app.store.tables import INDEX_TABLES, resource, resource_version, search_reference

ID_CHARACTERS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")
MAX_INCLUDES = 1000


@dataclass
class Stored:
    """One version of a resource as stored; `content` is its JSON text (None when the version is a delete)."""

    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: str | None
    pk: int = 0
    method: str = ""
    created: bool = False
    org: str | None = None
    patient: str | None = None
    body: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # `content` parsed, when at hand

    def parsed(self) -> dict[str, Any] | None:
        """The content as a dict, for reading only: the writer's own (the rules after a write read every written
        resource, and parsing it again was a tenth of rewriting a district's masters), else parsed once."""
        if self.body is None and self.content is not None:
            self.body = orjson.loads(self.content)
        return self.body

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def versioned_reference(self) -> str:
        return f"{self.reference}/_history/{self.version_id}"


@dataclass
class Current:
    pk: int
    version_id: int
    deleted: bool
    resource_type: str = ""
    org: str | None = None
    patient: str | None = None


@dataclass
class Write:
    resource_type: str
    resource_id: str
    method: str
    content: dict[str, Any] | None  # None: delete
    current: Current | None
    org: str | None = None  # the sender's Organization, for a new resource


@dataclass
class SearchPage:
    matches: list[Stored]
    included: list[Stored] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None


@dataclass
class HistoryPage:
    entries: list[Stored]
    next_cursor: str | None = None


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(resource_id: str) -> None:
    if not resource_id or len(resource_id) > 64 or not set(resource_id) <= ID_CHARACTERS:
        raise InvalidRequest(f"invalid resource id {resource_id!r}: 1-64 of A-Z a-z 0-9 - .", expression=["id"])


def check_type(resource_type: str) -> None:
    if not resources.is_resource_type(resource_type):
        raise NotFound(f"unknown resource type {resource_type!r}", expression=[resource_type])


# --- reads -----------------------------------------------------------------------------------------------------

_VERSION_COLUMNS = (
    resource_version.c.resource_pk,
    resource_version.c.res_type,
    resource_version.c.res_id,
    resource_version.c.version_id,
    resource_version.c.last_updated,
    resource_version.c.deleted,
    resource_version.c.content,
    resource_version.c.method,
)
_OWNER_COLUMNS = (resource.c.org, resource.c.patient)
DERIVED_TABLES = (*INDEX_TABLES.values(), care_relation, consent_denial)


def _stored(row: Row[Any]) -> Stored:
    return Stored(
        resource_type=row.res_type,
        resource_id=row.res_id,
        version_id=row.version_id,
        last_updated=dates.aware(row.last_updated),
        deleted=row.deleted,
        content=row.content,
        pk=row.resource_pk,
        method=row.method,
        org=row._mapping.get("org"),
        patient=row._mapping.get("patient"),
    )


CURRENT_VERSION = and_(resource.c.pk == resource_version.c.resource_pk, resource.c.version_id == resource_version.c.version_id)
# Statements of fixed shape are built once: building a statement costs several times more than running it.
_READ = (
    select(*_VERSION_COLUMNS, *_OWNER_COLUMNS)
    .join(resource, CURRENT_VERSION)
    .where(resource.c.res_type == bindparam("rtype"), resource.c.res_id == bindparam("rid"))
)
_VREAD = select(*_VERSION_COLUMNS, *_OWNER_COLUMNS).join(resource, resource.c.pk == resource_version.c.resource_pk).where(
    resource_version.c.res_type == bindparam("rtype"),
    resource_version.c.res_id == bindparam("rid"),
    resource_version.c.version_id == bindparam("vid"),
)
_READ_MANY = (
    select(*_VERSION_COLUMNS, *_OWNER_COLUMNS)
    .join(resource, CURRENT_VERSION)
    .where(resource.c.res_type == bindparam("rtype"), resource.c.res_id.in_(bindparam("rids", expanding=True)))
)
# With the policy's facts about the row's resident, for a principal the policy applies to.
_READ_POLICED = _READ.add_columns(*policy.fact_columns(resource.c.patient))
_READ_MANY_POLICED = _READ_MANY.add_columns(*policy.fact_columns(resource.c.patient))
_VREAD_POLICED = _VREAD.add_columns(*policy.fact_columns(resource.c.patient))
_CURRENT = select(resource.c.pk, resource.c.version_id, resource.c.deleted, resource.c.res_type, *_OWNER_COLUMNS).where(
    resource.c.res_type == bindparam("rtype"), resource.c.res_id == bindparam("rid")
)
_CURRENT_FOR_UPDATE = _CURRENT.with_for_update()


def read(session: Session, resource_type: str, resource_id: str, *, audit: bool = True) -> Stored:
    check_type(resource_type)
    principal = policy.principal_of(session)
    policy.require(principal, resource_type, "r")
    statement, params = _policed(principal, _READ, _READ_POLICED, {"rtype": resource_type, "rid": resource_id})
    row = session.connection().execute(statement, params).first()
    if row is None:
        raise NotFound(f"{resource_type}/{resource_id} is not known", expression=[resource_type])
    stored = _stored(row)
    policy.require_visible(session, principal, stored, stored.reference, facts=_facts(row))
    if stored.deleted:
        raise Gone(f"{resource_type}/{resource_id} was deleted", expression=[resource_type])
    membership.mask(session, principal, [stored])
    if audit:
        _audit_access(principal, "read", [stored])
    return stored


def read_visible(session: Session, resource_type: str, resource_ids: Sequence[str]) -> dict[str, Stored]:
    """The current versions of these resources that exist and the principal may see, by id, in one query; not
    audited (the caller audits what it hands out)."""
    check_type(resource_type)
    principal = policy.principal_of(session)
    policy.require(principal, resource_type, "r")
    if not resource_ids:
        return {}
    statement, params = _policed(principal, _READ_MANY, _READ_MANY_POLICED, {"rtype": resource_type, "rids": list(resource_ids)})
    found = {}
    for row in session.connection().execute(statement, params):
        stored, facts = _stored(row), _facts(row)
        if not stored.deleted and (facts is None or policy.decide(principal, stored, denied=facts[0], caring=facts[1])):
            found[stored.resource_id] = stored
    membership.mask(session, principal, list(found.values()))
    return found


def vread(session: Session, resource_type: str, resource_id: str, version_id: str) -> Stored:
    check_type(resource_type)
    principal = policy.principal_of(session)
    policy.require(principal, resource_type, "r")
    if not version_id.isdigit():
        raise NotFound(f"version {version_id!r} of {resource_type}/{resource_id} is not known")
    statement, params = _policed(principal, _VREAD, _VREAD_POLICED, {"rtype": resource_type, "rid": resource_id, "vid": int(version_id)})
    row = session.connection().execute(statement, params).first()
    if row is None:
        raise NotFound(f"version {version_id} of {resource_type}/{resource_id} is not known")
    stored = _stored(row)
    policy.require_visible(session, principal, stored, stored.reference, facts=_facts(row))
    if stored.deleted:
        raise Gone(f"version {version_id} of {resource_type}/{resource_id} is a deletion")
    membership.mask(session, principal, [stored])
    _audit_access(principal, "vread", [stored])
    return stored


def _policed(principal: Principal, plain: Select[Any], policed: Select[Any], params: dict[str, Any]) -> tuple[Select[Any], dict[str, Any]]:
    """The statement to read a row with: with the policy's facts, unless the principal is unrestricted."""
    if principal.unrestricted:
        return plain, params
    return policed, {**params, "policy_org": principal.organization or ""}


def _facts(row: Row[Any]) -> tuple[bool, bool] | None:
    values = row._mapping
    return (bool(values["denied"]), bool(values["caring"])) if "denied" in values else None


def _audit_access(principal: Principal, interaction: str, touched: Sequence[Stored], query: str | None = None) -> None:
    """Queue the audit of a read, search or history (the server's own reads are not audited)."""
    if principal is SYSTEM:
        return
    audit_trail.record(principal, interaction, query=query, patients=[s.patient for s in touched if s.patient],
                       resources=[s.versioned_reference for s in touched if s.patient] if query is None else ())


def current(session: Session, resource_type: str, resource_id: str, *, lock: bool = False) -> Current | None:
    """The resource's current version; with `lock`, held until commit (a row lock; SQLite holds its write lock)."""
    statement = _CURRENT_FOR_UPDATE if lock else _CURRENT
    row = session.connection().execute(statement, {"rtype": resource_type, "rid": resource_id}).first()
    return Current(row.pk, row.version_id, row.deleted, row.res_type, row.org, row.patient) if row else None


def current_many(session: Session, resource_type: str, resource_ids: Iterable[str], *, lock: bool = False) -> dict[str, Current]:
    """`current` for many resources of one type in one query, locked in id order."""
    ids = sorted(set(resource_ids))
    if not ids:
        return {}
    statement = (select(resource.c.res_id, resource.c.pk, resource.c.version_id, resource.c.deleted, resource.c.res_type, *_OWNER_COLUMNS)
                 .where(resource.c.res_type == resource_type, among(session, resource.c.res_id, ids)).order_by(resource.c.res_id))
    rows = session.connection().execute(statement.with_for_update() if lock else statement)
    return {row.res_id: Current(row.pk, row.version_id, row.deleted, row.res_type, row.org, row.patient) for row in rows}


# --- writes ----------------------------------------------------------------------------------------------------


def content(session: Session, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    """The current version's JSON, unchecked and unaudited: for the server's own rules, never for a client."""
    text = session.connection().scalar(
        select(resource_version.c.content).join(resource, CURRENT_VERSION)
        .where(resource.c.res_type == resource_type, resource.c.res_id == resource_id)
    )
    return orjson.loads(text) if text else None


def prepare(resource_type: str, body: Any, *, expected_id: str | None = None) -> dict[str, Any]:
    """Check a request body is a valid resource of the expected type (and id, for updates)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object holding a FHIR resource", expression=[resource_type])
    if body.get("resourceType") != resource_type:
        raise InvalidRequest(
            f"resourceType {body.get('resourceType')!r} does not match the URL's {resource_type}",
            expression=["resourceType"],
        )
    if expected_id is not None:
        if "id" not in body:
            raise InvalidRequest("an update must carry the resource id in the body", expression=[f"{resource_type}.id"])
        if body["id"] != expected_id:
            raise InvalidRequest(
                f"body id {body['id']!r} does not match the URL's {expected_id!r}", expression=[f"{resource_type}.id"]
            )
    resources.validate(body)
    return body


def plan_create(resource_type: str, body: dict[str, Any], resource_id: str | None = None) -> Write:
    return Write(resource_type, resource_id or new_id(), "POST", body, None)


def plan_update(session: Session, resource_type: str, resource_id: str, body: dict[str, Any], *, if_match: int | None) -> Write:
    check_id(resource_id)
    found = current(session, resource_type, resource_id, lock=True)
    check_version(resource_type, resource_id, found, if_match)
    return Write(resource_type, resource_id, "PUT", body, found)


def check_version(resource_type: str, resource_id: str, found: Current | None, if_match: int | None) -> None:
    if if_match is None:
        return
    if found is None or found.deleted:
        raise PreconditionFailed(f"If-Match given but {resource_type}/{resource_id} does not exist", expression=["If-Match"])
    if found.version_id != if_match:
        raise PreconditionFailed(
            f"{resource_type}/{resource_id} is at version {found.version_id}, not {if_match}", expression=["If-Match"]
        )


def apply(session: Session, writes: Sequence[Write], *, authorized: bool = False) -> list[Stored]:
    """Check the principal may make these writes (unless the caller did, write by write: `authorize`), store them,
    and audit them in the same transaction."""
    if not writes:
        return []
    principal = policy.principal_of(session)
    if not authorized:
        for write in writes:
            authorize(session, write, principal)
    stored = write_versions(session, writes)
    rules.after(session, stored, principal)
    if principal is not SYSTEM:
        append_audit(session, _write_audits(principal, stored))
    return stored


def authorize(session: Session, write: Write, principal: Principal | None = None) -> None:
    """Raise Forbidden unless the principal may make this write (a transaction checks each entry itself, so that a
    refusal names the entry; `apply` checks the writes of everyone else)."""
    principal = principal or policy.principal_of(session)
    existing = write.current if write.current is not None and not write.current.deleted else None
    interaction = "d" if write.content is None else ("u" if existing else "c")
    policy.require(principal, write.resource_type, interaction)
    if existing is not None:
        policy.require_writable(session, principal, existing, f"{write.resource_type}/{write.resource_id}")
    if write.current is None and principal is not SYSTEM:
        write.org = principal.organization  # the server's own writes (adapters, loaders) name their source's
    rules.check(session, write, principal)


def _write_audits(principal: Principal, stored: Sequence[Stored]) -> list[dict[str, Any]]:
    """One AuditEvent per kind of write in the batch, naming every version written and every resident touched."""
    kinds: dict[str, list[Stored]] = {}
    for item in stored:
        kind = "delete" if item.deleted else ("create" if item.created else "update")
        kinds.setdefault(kind, []).append(item)
    return [
        audit_trail.event(principal, kind, resources=[s.versioned_reference for s in items], patients=[s.patient for s in items if s.patient])
        for kind, items in kinds.items()
    ]


def append_audit(session: Session, events: Sequence[dict[str, Any]], *, pending: bool = True) -> list[int]:
    """Store AuditEvents (already well-formed: built by audit_trail); their primary keys. `pending`: queue them for
    the hash chain (the caller that chains them itself passes False)."""
    if not events:
        return []
    writes = [Write("AuditEvent", new_id(), "POST", event, None, org=_agent_org(event)) for event in events]
    pks = [s.pk for s in write_versions(session, writes)]
    if pending:
        bulk_insert(session, audit_pending, [{"resource_pk": pk} for pk in pks])
    return pks


def _agent_org(event: dict[str, Any]) -> str | None:
    return relations.reference_id(event["agent"][0]["who"], "Organization")


def write_versions(session: Session, writes: Sequence[Write]) -> list[Stored]:
    """Store new versions and their derived rows: a few batched statements whatever the number of writes. No checks,
    audit or matching: `apply` adds those; the server's own derived resources (audit events, masters) come here."""
    settings = get_settings()
    moment = dates.now()
    last_updated = dates.instant(moment)
    pks: dict[int, int] = {}
    patients = [_patient(w) for w in writes]

    new = [i for i, w in enumerate(writes) if w.current is None]
    if new:
        keys = insert_returning_keys(session, resource, [
            {"res_type": writes[i].resource_type, "res_id": writes[i].resource_id, "version_id": 1,
             "last_updated": moment, "deleted": writes[i].content is None, "org": writes[i].org, "patient": patients[i]}
            for i in new
        ])
        pks.update(zip(new, keys, strict=True))
    existing = [i for i, w in enumerate(writes) if w.current is not None]
    stale: list[int] = []  # resources rewritten: their derived rows are replaced
    if existing:
        session.connection().execute(
            sql_update(resource)
            .where(resource.c.pk == bindparam("b_pk"))
            .values(version_id=bindparam("b_version"), last_updated=bindparam("b_at"), deleted=bindparam("b_deleted"),
                    patient=bindparam("b_patient")),
            [
                {"b_pk": writes[i].current.pk, "b_version": writes[i].current.version_id + 1,  # type: ignore[union-attr]
                 "b_at": moment, "b_deleted": writes[i].content is None, "b_patient": patients[i]}
                for i in existing
            ],
        )
        for i in existing:
            pks[i] = writes[i].current.pk  # type: ignore[union-attr]
        stale = [pks[i] for i in existing]

    stored: list[Stored] = []
    version_rows: list[dict[str, Any]] = []
    index: dict[str, list[dict[str, Any]]] = {kind: [] for kind in INDEX_TABLES}
    cares: list[dict[str, Any]] = []
    denials: list[dict[str, Any]] = []
    for i, write in enumerate(writes):
        version_id = write.current.version_id + 1 if write.current else 1
        text = None
        if write.content is not None:
            content = write.content
            content["id"] = write.resource_id
            content["meta"] = {**(content.get("meta") or {}), "versionId": str(version_id), "lastUpdated": last_updated}
            text = orjson.dumps(content).decode()
            for kind, rows in index_rows(content, zone=settings.zone, base_url=settings.base_url).items():
                index[kind].extend({**row, "resource_pk": pks[i]} for row in rows)
            cares.extend({**row, "resource_pk": pks[i]} for row in relations.care_rows(content))
            denials.extend({**row, "resource_pk": pks[i]} for row in relations.consent_rows(content))
        version_rows.append(
            {"resource_pk": pks[i], "version_id": version_id, "res_type": write.resource_type, "res_id": write.resource_id,
             "last_updated": moment, "method": write.method, "deleted": write.content is None, "content": text}
        )
        created = write.current is None or write.current.deleted
        org = write.current.org if write.current else write.org
        stored.append(
            Stored(write.resource_type, write.resource_id, version_id, moment, write.content is None, text, pks[i],
                   write.method, created=created and write.content is not None, org=org, patient=patients[i], body=write.content)
        )
    derived = {INDEX_TABLES[kind]: rows for kind, rows in index.items()}
    write_rows(session, {resource_version: version_rows, **derived, care_relation: cares, consent_denial: denials},
               replacing=DERIVED_TABLES, of=stale)
    return stored


def _patient(write: Write) -> str | None:
    if write.content is None:
        return write.current.patient if write.current else None
    if write.resource_type == "Patient":
        return write.resource_id
    return relations.patient_of(write.content)


def create(session: Session, resource_type: str, body: Any, *, if_none_exist: str | None = None) -> Stored:
    """Create with a server-assigned id; with If-None-Exist, return the one existing match instead."""
    check_type(resource_type)
    prepared = prepare(resource_type, body)
    if if_none_exist is not None:
        params = parse_query(if_none_exist)
        lock_key(session, f"{resource_type}?{sorted(params)}")
        matches = match(session, resource_type, params)
        if len(matches) > 1:
            raise PreconditionFailed(f"If-None-Exist matches {len(matches)} {resource_type} resources", expression=["If-None-Exist"])
        if matches:
            return read(session, resource_type, matches[0], audit=False)
    return apply(session, [plan_create(resource_type, prepared)])[0]


def update(session: Session, resource_type: str, resource_id: str, body: Any, *, if_match: int | None = None) -> Stored:
    """Update, or create with the client's id when the resource is new (update-as-create)."""
    check_type(resource_type)
    check_id(resource_id)
    prepared = prepare(resource_type, body, expected_id=resource_id)
    lock_key(session, f"{resource_type}/{resource_id}")
    return apply(session, [plan_update(session, resource_type, resource_id, prepared, if_match=if_match)])[0]


def conditional_update(
    session: Session, resource_type: str, params: list[tuple[str, str]], body: Any, *, if_match: int | None = None
) -> Stored:
    """PUT Type?criteria: no match creates, one match updates it, several fail with 412."""
    check_type(resource_type)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object holding a FHIR resource", expression=[resource_type])
    lock_key(session, f"{resource_type}?{sorted(params)}")
    matches = match(session, resource_type, params)
    if len(matches) > 1:
        raise PreconditionFailed(f"the criteria match {len(matches)} {resource_type} resources", expression=[resource_type])
    if matches:
        if "id" in body and body["id"] != matches[0]:
            raise InvalidRequest(f"body id {body['id']!r} is not the matched resource {matches[0]!r}", expression=[f"{resource_type}.id"])
        prepared = prepare(resource_type, {**body, "id": matches[0]}, expected_id=matches[0])
        return apply(session, [plan_update(session, resource_type, matches[0], prepared, if_match=if_match)])[0]
    resource_id = body.get("id")
    if resource_id is not None:
        check_id(resource_id)
        if current(session, resource_type, resource_id) is not None:
            raise Conflict(f"{resource_type}/{resource_id} exists but does not match the criteria", expression=[f"{resource_type}.id"])
    prepared = prepare(resource_type, body)
    return apply(session, [plan_create(resource_type, prepared, resource_id)])[0]


def patch(session: Session, resource_type: str, resource_id: str, operations: Any, *, if_match: int | None = None) -> Stored:
    """JSON Patch (RFC 6902) on the current version; the result must be a valid resource with the same id."""
    check_type(resource_type)
    found = current(session, resource_type, resource_id, lock=True)
    existing = read(session, resource_type, resource_id, audit=False)  # after the lock: no concurrent change can slip between
    check_version(resource_type, resource_id, found, if_match)
    assert existing.content is not None
    try:
        patched = jsonpatch.apply_patch(orjson.loads(existing.content), operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, ValueError) as exc:
        raise InvalidRequest(f"the JSON Patch cannot be applied: {exc}", expression=[resource_type]) from None
    prepared = prepare(resource_type, patched, expected_id=resource_id)
    return apply(session, [Write(resource_type, resource_id, "PATCH", prepared, found)])[0]


def delete_resource(session: Session, resource_type: str, resource_id: str) -> Stored | None:
    """Logical delete: a new version marked deleted. Deleting what is absent or already deleted is not an error."""
    check_type(resource_type)
    found = current(session, resource_type, resource_id, lock=True)
    if found is None or found.deleted:
        return None
    return apply(session, [Write(resource_type, resource_id, "DELETE", None, found)])[0]


def conditional_delete(session: Session, resource_type: str, params: list[tuple[str, str]]) -> Stored | None:
    check_type(resource_type)
    lock_key(session, f"{resource_type}?{sorted(params)}")
    matches = match(session, resource_type, params)
    if len(matches) > 1:
        raise PreconditionFailed(f"the criteria match {len(matches)} {resource_type} resources", expression=[resource_type])
    return delete_resource(session, resource_type, matches[0]) if matches else None


# --- search ----------------------------------------------------------------------------------------------------


def parse_query(query_string: str) -> list[tuple[str, str]]:
    params = parse_qsl(query_string.lstrip("?"), keep_blank_values=True)
    if not params:
        raise InvalidRequest("conditional criteria are empty", expression=["If-None-Exist"])
    return params


_VERSION_SELECT = (
    "SELECT v.resource_pk, v.res_type, v.res_id, v.version_id, v.last_updated, v.deleted,"
    " CAST(v.content AS TEXT) AS content, v.method"
)
_VERSION_TYPES: tuple[tuple[str, Any], ...] = (("last_updated", query.TIMESTAMP),)


def _where(sql: query.Sql, principal: Principal, resource_type: str, request: SearchRequest) -> list[str]:
    settings = get_settings()
    base_url = request.base_url or settings.base_url
    clauses = [f"r.res_type = {sql.name(resource_type)}", "r.deleted = FALSE"]
    clauses += [query.condition(sql, "r", resource_type, c, zone=settings.zone, base_url=base_url) for c in request.criteria]
    if resource_type == "Patient" and not any(c.name == "_tag" for c in request.criteria):
        clauses.append(_NOT_MASTER)  # the index's masters are found by _tag=urn:qiao:mpi|master (README)
    visible = policy.visible_sql(sql, principal, "r", [resource_type])
    return clauses + [visible] if visible else clauses


_NOT_MASTER = (
    "NOT EXISTS (SELECT 1 FROM search_token mt WHERE mt.resource_pk = r.pk AND mt.param = '_tag'"
    " AND mt.code = 'master' AND mt.system = 'urn:qiao:mpi')"
)


def match(session: Session, resource_type: str, params: list[tuple[str, str]], limit: int = 2) -> list[str]:
    """Ids of (at most `limit`) current resources matching search criteria: the core of conditional interactions."""
    if not params:
        raise InvalidRequest("conditional criteria are empty", expression=[resource_type])
    request = fhir_search.parse(resource_type, params)
    if not request.criteria:
        raise InvalidRequest("conditional criteria must contain search parameters", expression=[resource_type])
    sql = query.Sql()
    where = " AND ".join(_where(sql, policy.principal_of(session), resource_type, request))
    statement = sql.statement(f"SELECT r.res_id FROM resource r WHERE {where} LIMIT {int(limit)}")
    return list(session.connection().scalars(statement, sql.params))


def search(session: Session, request: SearchRequest) -> SearchPage:
    resource_type = request.resource_type
    check_type(resource_type)
    principal = policy.principal_of(session)
    policy.require(principal, resource_type, "s")
    sql = query.Sql()
    where = _where(sql, principal, resource_type, request)
    search_query = f"{resource_type}?{urlencode(request.applied)}"
    if request.summary == "count" or request.count == 0:
        _audit_access(principal, "search", [], search_query)
        return SearchPage([], total=_count(session, sql, where) if request.total != "none" else None)

    keys = [
        (query.sort_expression(sql, "r", resource_type, name, descending, parameter_type(resource_type, name) or ""), descending)
        for name, descending in request.sort
    ]
    keys.append(("r.pk", bool(request.sort and request.sort[-1][1])))
    page_where = list(where)
    if request.cursor:
        page_where.append(query.after_cursor(sql, keys, query.decode_cursor(request.cursor, len(keys))))
    sort_columns = "".join(f", {key} AS sort_{i}" for i, (key, _) in enumerate(keys))
    order = ", ".join(f"sort_{i} {'DESC' if descending else 'ASC'}" for i, (_, descending) in enumerate(keys))
    timestamps = tuple((f"sort_{i}", query.TIMESTAMP) for i, (key, _) in enumerate(keys) if key == "r.last_updated")
    statement = sql.statement(
        f"{_VERSION_SELECT}, r.org, r.patient{sort_columns} FROM resource r"
        " JOIN resource_version v ON v.resource_pk = r.pk AND v.version_id = r.version_id"
        f" WHERE {' AND '.join(page_where)} ORDER BY {order} LIMIT {int(request.count) + 1}",
        _VERSION_TYPES + timestamps,
    )
    rows = session.connection().execute(statement, sql.params).all()
    more = len(rows) > request.count
    rows = rows[: request.count]
    page = SearchPage([_stored(row) for row in rows])
    if more and rows:
        last = rows[-1]._mapping
        page.next_cursor = query.encode_cursor([last[f"sort_{i}"] for i in range(len(keys))])
    if request.total == "accurate" or (request.total != "none" and not request.cursor and not more):
        page.total = len(rows) if not more and not request.cursor else _count(session, sql, where)
    page.included = _included(session, principal, request, page.matches)
    membership.mask(session, principal, page.matches + page.included)
    _audit_access(principal, "search", page.matches + page.included, search_query)
    return page


def _count(session: Session, sql: query.Sql, where: list[str]) -> int:
    statement = sql.statement(f"SELECT COUNT(*) FROM resource r WHERE {' AND '.join(where)}")
    return int(session.connection().scalar(statement, sql.params) or 0)


def _included(session: Session, principal: Principal, request: SearchRequest, matches: list[Stored]) -> list[Stored]:
    """_include and _revinclude targets the principal may read and see."""
    if not matches or not (request.includes or request.revincludes):
        return []
    seen = {(m.resource_type, m.resource_id) for m in matches}
    pks: set[int] = set()
    for include in request.includes:
        where = [search_reference.c.resource_pk.in_([m.pk for m in matches]), search_reference.c.param == include.parameter]
        if include.target_type:
            where.append(search_reference.c.target_type == include.target_type)
        targets = session.connection().execute(select(search_reference.c.target_type, search_reference.c.target_id).where(*where)).all()
        pairs = [(t, i) for t, i in targets if t and (t, i) not in seen]
        for target_type, ids in _group(pairs).items():
            pks.update(
                session.connection().scalars(
                    select(resource.c.pk).where(resource.c.res_type == target_type, resource.c.res_id.in_(ids), resource.c.deleted == false())
                )
            )
    for include in request.revincludes:
        if include.target_type and include.target_type != request.resource_type:
            continue
        where = [
            search_reference.c.target_type == request.resource_type,
            search_reference.c.target_id.in_([m.resource_id for m in matches]),
            search_reference.c.param == include.parameter,
        ]
        if include.source_type != "*":
            where.append(search_reference.c.res_type == include.source_type)
        pks.update(session.connection().scalars(select(search_reference.c.resource_pk).where(*where).limit(MAX_INCLUDES)))
    pks -= {m.pk for m in matches}
    if not pks:
        return []
    rows = session.connection().execute(
        select(*_VERSION_COLUMNS, *_OWNER_COLUMNS)
        .join(resource, CURRENT_VERSION)
        .where(resource.c.pk.in_(sorted(pks)[:MAX_INCLUDES]), resource.c.deleted == false())
        .order_by(resource.c.pk)
    ).all()
    included = [s for s in map(_stored, rows) if policy.may(principal, s.resource_type, "r")]
    return [s for s, shown in zip(included, policy.visible(session, principal, included), strict=True) if shown]


def _group(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for resource_type, resource_id in pairs:
        grouped.setdefault(resource_type, []).append(resource_id)
    return grouped


# --- history ---------------------------------------------------------------------------------------------------


def history(
    session: Session,
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    since: datetime | None = None,
    count: int = 20,
    cursor: str | None = None,
) -> HistoryPage:
    """Versions newest first (instance, type or whole-system history) that the principal may see, paged by a keyset
    cursor. A resource's visibility follows its current owner and resident."""
    principal = policy.principal_of(session)
    sql = query.Sql()
    where = ["1 = 1"]
    if resource_type is not None:
        check_type(resource_type)
        policy.require(principal, resource_type, "r")
        where.append(f"v.res_type = {sql.name(resource_type)}")
    else:
        where += _readable_types_sql(sql, principal)
    visible = policy.visible_sql(sql, principal, "r", [resource_type] if resource_type else None)
    if visible:
        where.append(visible)
    if resource_id is not None:
        found = current(session, resource_type or "", resource_id)
        if found is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known", expression=[resource_type or ""])
        where.append(f"v.resource_pk = {sql.param(found.pk)}")
    if since is not None:
        where.append(f"v.last_updated >= {sql.param(since, query.TIMESTAMP)}")
    keys = [("v.last_updated", True), ("v.resource_pk", True), ("v.version_id", True)]
    if cursor:
        where.append(query.after_cursor(sql, keys, query.decode_cursor(cursor, len(keys))))
    statement = sql.statement(
        f"{_VERSION_SELECT}, r.org, r.patient FROM resource_version v JOIN resource r ON r.pk = v.resource_pk"
        f" WHERE {' AND '.join(where)}"
        f" ORDER BY v.last_updated DESC, v.resource_pk DESC, v.version_id DESC LIMIT {int(count) + 1}",
        _VERSION_TYPES,
    )
    rows = session.connection().execute(statement, sql.params).all()
    page = HistoryPage([_stored(row) for row in rows[:count]])
    membership.mask(session, principal, page.entries)
    _audit_access(principal, "history", page.entries, f"{resource_type or ''}/{resource_id or ''}/_history")
    if len(rows) > count and count > 0:
        last = rows[count - 1]
        page.next_cursor = query.encode_cursor([dates.aware(last.last_updated), last.resource_pk, last.version_id])
    return page


def _readable_types_sql(sql: query.Sql, principal: Principal) -> list[str]:
    types, audit_events = policy.readable_types(principal)
    if types is None:
        return [] if audit_events else [f"v.res_type <> {sql.name(policy.AUDIT_TYPE)}"]
    if not types:
        raise Forbidden("the token's scopes allow reading no resource type", expression=["_history"])
    return [f"v.res_type IN ({', '.join(sql.name(t) for t in sorted(types))})"]

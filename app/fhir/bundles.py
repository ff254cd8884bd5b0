"""Batch and transaction Bundles (https://hl7.org/fhir/R4/http.html#transaction).

A transaction is atomic: ids are assigned first, `urn:uuid:` and conditional references are resolved, then entries
run in the order the specification fixes (DELETE, POST, PUT/PATCH, GET) with all creates and updates written as one
batch, and any failure rolls the whole Bundle back. A batch runs each entry in its own savepoint.
"""

import base64
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import lock_key
from app.errors import InvalidRequest, NotFound, PreconditionFailed, QiaoError
from app.fhir import formats, interactions
from app.fhir.outcomes import operation_outcome
from app.store import repository as store
from app.store.dates import instant
from app.store.repository import Stored, Write

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class Entry:
    index: int
    method: str
    resource_type: str
    resource_id: str | None
    tail: list[str]  # path segments after type/id (e.g. ["_history", "2"])
    params: list[tuple[str, str]]
    resource: Any
    full_url: str | None
    request: dict[str, Any]
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def expression(self) -> str:
        return f"Bundle.entry[{self.index}]"


def process(session: Session, bundle: Any, base: str) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidRequest("POST to the base URL takes a Bundle", expression=["resourceType"])
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise InvalidRequest(f"Bundle.type must be batch or transaction, not {kind!r}", expression=["Bundle.type"])
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise InvalidRequest("Bundle.entry must be a list", expression=["Bundle.entry"])
    if len(raw_entries) > get_settings().max_bundle_entries:
        raise InvalidRequest(f"a Bundle may hold at most {get_settings().max_bundle_entries} entries", expression=["Bundle.entry"])
    if kind == "transaction":
        entries = [_parse_entry(i, raw, base) for i, raw in enumerate(raw_entries)]
        _transaction(session, entries, base)
        return _response_bundle("transaction-response", entries)
    return _response_bundle("batch-response", [_batch_entry(session, i, raw, base) for i, raw in enumerate(raw_entries)])


def _response_bundle(kind: str, entries: list[Entry]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [entry.response for entry in entries]}


def _parse_entry(index: int, raw: Any, base: str) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise InvalidRequest("every entry needs a request", expression=[f"{where}.request"])
    request = raw["request"]
    method = str(request.get("method", "")).upper()
    if method not in METHODS:
        raise InvalidRequest(f"request.method {method!r} is not one of {', '.join(METHODS)}", expression=[f"{where}.request.method"])
    url = request.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest("request.url is required", expression=[f"{where}.request.url"])
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    split = urlsplit(url)
    segments = [s for s in split.path.split("/") if s]
    if not segments:
        raise InvalidRequest(f"request.url {url!r} names no resource type", expression=[f"{where}.request.url"])
    store.check_type(segments[0])
    resource = raw.get("resource")
    if method in ("POST", "PUT") and not isinstance(resource, dict):
        raise InvalidRequest(f"a {method} entry needs a resource", expression=[f"{where}.resource"])
    return Entry(
        index=index,
        method=method,
        resource_type=segments[0],
        resource_id=segments[1] if len(segments) > 1 else None,
        tail=segments[2:],
        params=parse_qsl(split.query, keep_blank_values=True),
        resource=resource,
        full_url=raw.get("fullUrl"),
        request=request,
    )


# --- transaction -----------------------------------------------------------------------------------------------


def _transaction(session: Session, entries: list[Entry], base: str) -> None:
    ids: dict[str, str] = {}  # fullUrl → Type/id
    existing_creates: set[int] = set()
    for entry in entries:
        with _located(entry):
            _assign_id(session, entry, ids, existing_creates)
    targets = [f"{e.resource_type}/{e.resource_id}" for e in entries if e.method in ("PUT", "PATCH", "DELETE", "POST")]
    duplicate = next((t for t in targets if targets.count(t) > 1), None)
    if duplicate:
        raise InvalidRequest(f"{duplicate} is the target of more than one entry", expression=["Bundle.entry"])
    for entry in entries:
        if entry.resource is not None:
            with _located(entry):
                entry.resource = _resolve_references(session, entry.resource, ids, base)

    for entry in sorted(entries, key=lambda e: ORDER[e.method]):
        if entry.method == "DELETE":
            with _located(entry):
                store.delete_resource(session, entry.resource_type, entry.resource_id or "")
                entry.response = {"response": {"status": "204 No Content"}}

    writes: list[tuple[Entry, Write]] = []
    for entry in entries:
        with _located(entry):
            if entry.method == "POST" and entry.index not in existing_creates:
                prepared = store.prepare(entry.resource_type, entry.resource)
                writes.append((entry, store.plan_create(entry.resource_type, prepared, entry.resource_id)))
            elif entry.method == "PUT":
                prepared = store.prepare(entry.resource_type, entry.resource, expected_id=entry.resource_id)
                if_match = formats.if_match_version(entry.request.get("ifMatch"))
                write = store.plan_update(session, entry.resource_type, entry.resource_id or "", prepared, if_match=if_match)
                writes.append((entry, write))
            if writes and writes[-1][0] is entry:
                store.authorize(session, writes[-1][1])
    for (entry, _), stored in zip(writes, store.apply(session, [w for _, w in writes], authorized=True), strict=True):
        entry.response = _write_response(stored, 201 if stored.created else 200, base)
    for index in existing_creates:
        entry = entries[index]
        entry.response = _write_response(store.read(session, entry.resource_type, entry.resource_id or ""), 200, base)

    for entry in entries:
        if entry.method == "PATCH":
            with _located(entry):
                stored = store.patch(session, entry.resource_type, entry.resource_id or "", _patch_operations(entry),
                                     if_match=formats.if_match_version(entry.request.get("ifMatch")))
                entry.response = _write_response(stored, 200, base)
    for entry in entries:
        if entry.method in ("GET", "HEAD"):
            with _located(entry):
                entry.response = _read_entry(session, entry, base)


def _assign_id(session: Session, entry: Entry, ids: dict[str, str], existing_creates: set[int]) -> None:
    if entry.method == "POST":
        if entry.resource_id is not None:
            raise InvalidRequest("a POST entry's url is the resource type only", expression=[f"{entry.expression}.request.url"])
        if_none_exist = entry.request.get("ifNoneExist")
        if if_none_exist:
            params = store.parse_query(if_none_exist)
            lock_key(session, f"{entry.resource_type}?{sorted(params)}")
            found = store.match(session, entry.resource_type, params)
            if len(found) > 1:
                raise PreconditionFailed(f"ifNoneExist matches {len(found)} resources", expression=[f"{entry.expression}.request.ifNoneExist"])
            if found:
                entry.resource_id = found[0]
                existing_creates.add(entry.index)
        entry.resource_id = entry.resource_id or store.new_id()
    elif entry.method == "PUT" and entry.resource_id is None:
        if not entry.params:
            raise InvalidRequest("a PUT entry's url needs an id or search criteria", expression=[f"{entry.expression}.request.url"])
        lock_key(session, f"{entry.resource_type}?{sorted(entry.params)}")
        found = store.match(session, entry.resource_type, entry.params)
        if len(found) > 1:
            raise PreconditionFailed(f"the criteria match {len(found)} resources", expression=[f"{entry.expression}.request.url"])
        entry.resource_id = found[0] if found else entry.resource.get("id") or store.new_id()
        entry.resource["id"] = entry.resource_id
    elif entry.method in ("DELETE", "PATCH") and entry.resource_id is None:
        if entry.method == "PATCH" or not entry.params:
            raise InvalidRequest(f"a {entry.method} entry's url needs an id", expression=[f"{entry.expression}.request.url"])
        found = store.match(session, entry.resource_type, entry.params)
        if len(found) > 1:
            raise PreconditionFailed(f"the criteria match {len(found)} resources", expression=[f"{entry.expression}.request.url"])
        entry.resource_id = found[0] if found else store.new_id()
    if entry.resource_id is not None:
        store.check_id(entry.resource_id)
    if entry.full_url and entry.resource_id and entry.method in ("POST", "PUT"):
        ids[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"


def _resolve_references(session: Session, node: Any, ids: dict[str, str], base: str) -> Any:
    """Rewrite references to entries' fullUrls (urn:uuid:…) and conditional references (Type?criteria)."""
    if isinstance(node, list):
        return [_resolve_references(session, item, ids, base) for item in node]
    if not isinstance(node, dict):
        return node
    resolved = {key: _resolve_references(session, value, ids, base) for key, value in node.items()}
    reference = resolved.get("reference")
    if isinstance(reference, str):
        if reference in ids:
            resolved["reference"] = ids[reference]
        elif reference.startswith("urn:uuid:") or reference.startswith("urn:oid:"):
            raise InvalidRequest(f"reference {reference} matches no entry's fullUrl", expression=["reference"])
        elif "?" in reference and "/" not in reference.split("?", 1)[0]:
            resource_type, _, query = reference.partition("?")
            store.check_type(resource_type)
            found = store.match(session, resource_type, store.parse_query(query))
            if len(found) != 1:
                raise PreconditionFailed(
                    f"conditional reference {reference} matches {len(found)} resources, not exactly one", expression=["reference"]
                )
            resolved["reference"] = f"{resource_type}/{found[0]}"
    return resolved


def _patch_operations(entry: Entry) -> Any:
    """In a Bundle, a JSON Patch travels as a Binary with contentType application/json-patch+json."""
    resource = entry.resource
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise InvalidRequest("a PATCH entry carries its JSON Patch as a Binary resource", expression=[f"{entry.expression}.resource"])
    if resource.get("contentType") != formats.JSON_PATCH:
        raise InvalidRequest(f"only {formats.JSON_PATCH} patches are supported", expression=[f"{entry.expression}.resource.contentType"])
    try:
        return orjson.loads(base64.b64decode(resource.get("data", "")))
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidRequest("Binary.data is not a base64 JSON Patch", expression=[f"{entry.expression}.resource.data"]) from None


def _write_response(stored: Stored, status: int, base: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "status": "201 Created" if status == 201 else "200 OK",
        "location": stored.versioned_reference,
        "etag": stored.etag,
        "lastModified": instant(stored.last_updated),
    }
    item = {"fullUrl": f"{base}/{stored.reference}", "response": response}
    if stored.content is not None:
        item["resource"] = orjson.Fragment(stored.content)
    return item


def _read_entry(session: Session, entry: Entry, base: str) -> dict[str, Any]:
    if entry.resource_id is None:
        body = interactions.search(session, entry.resource_type, entry.params, base=base, lenient=False)
        return {"resource": body, "response": {"status": "200 OK"}}
    if entry.tail[:1] == ["_history"] and len(entry.tail) == 2:
        stored = store.vread(session, entry.resource_type, entry.resource_id, entry.tail[1])
    elif entry.tail[:1] == ["_history"]:
        page = store.history(session, resource_type=entry.resource_type, resource_id=entry.resource_id)
        body = formats.history_bundle(page, base, f"{entry.resource_type}/{entry.resource_id}/_history", [])
        return {"resource": body, "response": {"status": "200 OK"}}
    elif entry.tail:
        raise NotFound(f"{entry.request.get('url')} is not a readable URL")
    else:
        stored = store.read(session, entry.resource_type, entry.resource_id)
    item = _write_response(stored, 200, base)
    item["response"].pop("location")
    return item


class _located:
    """Prefix the expressions of an entry's errors with Bundle.entry[i]."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, _tb: Any) -> None:
        if isinstance(error, QiaoError):
            prefix = self.entry.expression
            for issue in error.issues:
                issue.expression = [e if e.startswith("Bundle.") else f"{prefix}.{e}" for e in issue.expression] or [prefix]


# --- batch -----------------------------------------------------------------------------------------------------


def _batch_entry(session: Session, index: int, raw: Any, base: str) -> Entry:
    """One batch entry in its own savepoint: a failure becomes that entry's response and rolls back only it."""
    placeholder = Entry(index, "GET", "", None, [], [], None, None, {})
    try:
        with session.begin_nested():
            entry = _parse_entry(index, raw, base)
            _run_single(session, entry, base)
            return entry
    except QiaoError as error:
        for issue in error.issues:
            issue.expression = issue.expression or [placeholder.expression]
        placeholder.response = {
            "response": {"status": f"{error.status}", "outcome": operation_outcome(error.issues)}
        }
        return placeholder


def _run_single(session: Session, entry: Entry, base: str) -> None:
    if entry.method in ("GET", "HEAD"):
        entry.response = _read_entry(session, entry, base)
        return
    if entry.method == "POST":
        stored = store.create(session, entry.resource_type, entry.resource, if_none_exist=entry.request.get("ifNoneExist"))
        entry.response = _write_response(stored, 201 if stored.created else 200, base)
        return
    if_match = formats.if_match_version(entry.request.get("ifMatch"))
    if entry.method == "PUT":
        if entry.resource_id is None:
            stored = store.conditional_update(session, entry.resource_type, entry.params, entry.resource, if_match=if_match)
        else:
            stored = store.update(session, entry.resource_type, entry.resource_id, entry.resource, if_match=if_match)
        entry.response = _write_response(stored, 201 if stored.created else 200, base)
    elif entry.method == "PATCH":
        if entry.resource_id is None:
            raise InvalidRequest("a PATCH entry's url needs an id", expression=[f"{entry.expression}.request.url"])
        stored = store.patch(session, entry.resource_type, entry.resource_id, _patch_operations(entry), if_match=if_match)
        entry.response = _write_response(stored, 200, base)
    else:
        if entry.resource_id is None:
            store.conditional_delete(session, entry.resource_type, entry.params)
        else:
            store.delete_resource(session, entry.resource_type, entry.resource_id)
        entry.response = {"response": {"status": "204 No Content"}}


"""The FHIR JSON wire format: media types, request bodies, ETag/If-Match, Prefer, and Bundles of stored resources.

Stored resources are embedded as the bytes the store holds (orjson.Fragment): nothing is re-serialised.
"""

from collections.abc import Iterable
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response

from app.config import get_settings
from app.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from app.fhir.outcomes import information
from app.store.dates import instant
from app.store.repository import HistoryPage, SearchPage, Stored

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {"application/fhir+json", "application/json"}
JSON_PATCH = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"
RESPONSE_TYPE = "application/fhir+json; charset=utf-8"


class FhirResponse(Response):
    media_type = RESPONSE_TYPE

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        if isinstance(content, bytes):
            return content
        if isinstance(content, str):
            return content.encode()
        return orjson.dumps(content)


def base_url(request: Request) -> str:
    configured = get_settings().base_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/") + "/fhir"


async def read_json(request: Request, allowed: set[str] = JSON_TYPES) -> Any:
    """The request body as JSON, after checking its media type and size."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {media_type or '(none)'} is not supported; use {' or '.join(sorted(allowed))}",
            expression=["Content-Type"],
        )
    limit = get_settings().max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes", expression=["Content-Length"])
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes", expression=["Content-Length"])
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", expression=["body"]) from None


async def read_form(request: Request) -> list[tuple[str, str]]:
    """Search parameters posted as application/x-www-form-urlencoded."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM:
        raise UnsupportedMediaType(f"POST _search takes {FORM}", expression=["Content-Type"])
    body = await request.body()
    if len(body) > get_settings().max_body_bytes:
        raise PayloadTooLarge("the search form is too large", expression=["body"])
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def if_match_version(header: str | None) -> int | None:
    """W/"3" → 3."""
    if header is None:
        return None
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not value.isdigit():
        raise InvalidRequest(f'If-Match must be a version ETag such as W/"3", not {header!r}', expression=["If-Match"])
    return int(value)


def prefer(request: Request, key: str) -> str | None:
    """One token of the Prefer header, e.g. prefer(request, "return") → "minimal"."""
    for part in request.headers.get("prefer", "").split(";"):
        for item in part.split(","):
            name, _, value = item.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
    return None


def http_date(stored: Stored) -> str:
    return format_datetime(stored.last_updated, usegmt=True)


def resource_response(
    stored: Stored, *, status: int = 200, base: str = "", location: bool = False, return_pref: str | None = None
) -> FhirResponse:
    headers = {"ETag": stored.etag, "Last-Modified": http_date(stored)}
    if location:
        headers["Location"] = f"{base}/{stored.versioned_reference}"
    if return_pref == "minimal":
        return FhirResponse(None, status_code=status, headers=headers)
    if return_pref == "OperationOutcome":
        return FhirResponse(information(f"{stored.versioned_reference} stored"), status_code=status, headers=headers)
    return FhirResponse(stored.content, status_code=status, headers=headers)


def entry(stored: Stored, base: str, mode: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"fullUrl": f"{base}/{stored.reference}"}
    if stored.content is not None:
        item["resource"] = orjson.Fragment(stored.content)
    if mode:
        item["search"] = {"mode": mode}
    return item


def searchset(page: SearchPage, base: str, path: str, applied: Iterable[tuple[str, str]], count: int) -> dict[str, Any]:
    applied = list(applied)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        bundle["total"] = page.total
    links = [{"relation": "self", "url": _url(base, path, applied)}]
    if page.next_cursor is not None:
        paging = [(k, v) for k, v in applied if k != "_count"] + [("_count", str(count)), ("_cursor", page.next_cursor)]
        links.append({"relation": "next", "url": _url(base, path, paging)})
    bundle["link"] = links
    bundle["entry"] = [entry(s, base, "match") for s in page.matches] + [entry(s, base, "include") for s in page.included]
    return bundle


def history_bundle(page: HistoryPage, base: str, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
    links = [{"relation": "self", "url": _url(base, path, params)}]
    if page.next_cursor is not None:
        links.append({"relation": "next", "url": _url(base, path, [*params, ("_cursor", page.next_cursor)])})
    entries = []
    for stored in page.entries:
        item = entry(stored, base)
        url = stored.reference if stored.method in ("PUT", "DELETE", "PATCH") else stored.resource_type
        status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(stored.method, "200 OK")
        item["request"] = {"method": stored.method, "url": url}
        item["response"] = {"status": status, "etag": stored.etag, "lastModified": instant(stored.last_updated)}
        entries.append(item)
    return {"resourceType": "Bundle", "type": "history", "link": links, "entry": entries}


def _url(base: str, path: str, params: list[tuple[str, str]]) -> str:
    url = f"{base}/{path}" if path else base
    return f"{url}?{urlencode(params)}" if params else url

"""Search and history as Bundles: shared by the REST routes and by GET entries of batch/transaction Bundles."""

from datetime import UTC
from typing import Any

import orjson
from sqlalchemy.orm import Session

from app.config import get_settings
from app.errors import InvalidRequest
from app.fhir import formats
from app.fhir import search as fhir_search
from app.store import dates
from app.store import repository as store


def search(session: Session, resource_type: str, params: list[tuple[str, str]], *, base: str, lenient: bool) -> dict[str, Any]:
    store.check_type(resource_type)
    settings = get_settings()
    request = fhir_search.parse(
        resource_type, params, lenient=lenient, default_count=settings.default_page_size, max_count=settings.max_page_size
    )
    request.base_url = base
    page = store.search(session, request)
    if request.elements:
        for stored in page.matches:
            stored.content = _with_elements(stored.content, request.elements)
    return formats.searchset(page, base, resource_type, request.applied, request.count)


def _with_elements(content: str | None, elements: tuple[str, ...]) -> str | None:
    """_elements: keep the named top-level elements (and the mandatory ones), marked SUBSETTED."""
    if content is None:
        return None
    resource = orjson.loads(content)
    kept = {k: v for k, v in resource.items() if k in elements or k in ("resourceType", "id", "meta")}
    meta = kept.setdefault("meta", {})
    meta["tag"] = [*meta.get("tag", []), {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}]
    return orjson.dumps(kept).decode()


def history(
    session: Session,
    params: list[tuple[str, str]],
    *,
    base: str,
    resource_type: str | None = None,
    resource_id: str | None = None,
) -> dict[str, Any]:
    settings = get_settings()
    count, since, cursor = settings.default_page_size, None, None
    for key, value in params:
        if key == "_count":
            if not value.isdigit():
                raise InvalidRequest("_count must be a non-negative integer", expression=["_count"])
            count = min(int(value), settings.max_page_size)
        elif key == "_since":
            try:
                since = dates.from_micros(dates.date_range(value, settings.zone)[0]).astimezone(UTC)
            except dates.BadDate:
                raise InvalidRequest(f"_since must be an instant, not {value!r}", expression=["_since"]) from None
        elif key == "_cursor":
            cursor = value
        elif key not in ("_format", "_pretty"):
            raise InvalidRequest(f"history does not support the parameter {key!r}", expression=[key])
    page = store.history(session, resource_type=resource_type, resource_id=resource_id, since=since, count=count, cursor=cursor)
    path = "/".join(p for p in (resource_type, resource_id, "_history") if p)
    kept = [(k, v) for k, v in params if k in ("_count", "_since")]
    return formats.history_bundle(page, base, path, kept)


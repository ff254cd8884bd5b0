"""Pure: the kick-off parameters of a Bulk Data export (IG v2.0.0, `export.md`) checked and parsed into an
ExportRequest, and the OperationOutcome issues of whatever `Prefer: handling=lenient` let it ignore."""

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from app.auth.relations import reference_id
from app.errors import InvalidRequest, Issue
from app.fhir import resources
from app.fhir import search as fhir_search

SYSTEM, PATIENT, GROUP = "system", "patient", "group"
OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
#: repeated parameters mean the same as one comma-joined value
_LISTS = ("_type", "_elements", "_typeFilter", "includeAssociatedData")
_KNOWN = {"_outputFormat", "_since", "patient", *_LISTS}


@dataclass
class ExportRequest:
    level: str
    group_id: str | None = None
    types: list[str] = field(default_factory=list)  # empty: every type the client may read
    since: str | None = None  # instant, ISO 8601 with offset
    type_filters: dict[str, list[str]] = field(default_factory=dict)  # type → queries (OR-ed)
    elements: list[str] = field(default_factory=list)  # "element" or "Type.element"
    patients: list[str] = field(default_factory=list)  # ids, from POST `patient`
    #: OperationOutcome issues for what was ignored under lenient handling, in the manifest's `error`
    ignored: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> "ExportRequest":
        return cls(**orjson.loads(text))


def parse(level: str, params: list[tuple[str, str]], *, lenient: bool, group_id: str | None = None,
          posted: bool = False) -> ExportRequest:
    """Check every parameter; an unsupported one is an error, or an ignored-parameter issue when lenient."""
    request = ExportRequest(level, group_id)
    ignored: list[Issue] = []

    def refuse(message: str, name: str) -> None:
        if not lenient:
            raise InvalidRequest(message, expression=[name])
        ignored.append(Issue("warning", "not-supported", f"ignored: {message}", [name]))

    values: dict[str, list[str]] = {}
    for name, value in params:
        if name not in _KNOWN:
            refuse(f"parameter {name!r} is not supported by this server's $export", name)
            continue
        if name in _LISTS:
            values.setdefault(name, []).extend(v.strip() for v in value.split(",") if v.strip())
        else:
            values.setdefault(name, []).append(value)
    for name in ("_outputFormat", "_since"):
        if len(values.get(name, [])) > 1:
            raise InvalidRequest(f"{name} may be given once", expression=[name])

    output_format = values.get("_outputFormat", [OUTPUT_FORMATS[0]])[0]
    if output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(f"_outputFormat {output_format!r} is not supported; use one of {', '.join(OUTPUT_FORMATS)}",
                             expression=["_outputFormat"])
    if "_since" in values:
        request.since = _instant(values["_since"][0])
    for resource_type in dict.fromkeys(values.get("_type", [])):
        if not resources.is_resource_type(resource_type):
            refuse(f"_type {resource_type!r} is not a resource type this server exports", "_type")
        else:
            request.types.append(resource_type)
    for query in values.get("_typeFilter", []):
        resource_type, _, query_string = query.partition("?")
        if not resources.is_resource_type(resource_type) or not query_string:
            raise InvalidRequest(f"_typeFilter {query!r} must be [type]?[search parameters]", expression=["_typeFilter"])
        _check_filter(resource_type, query_string)
        request.type_filters.setdefault(resource_type, []).append(query_string)
    for element in values.get("_elements", []):
        resource_type, _, name = element.rpartition(".")
        if resource_type and not resources.is_resource_type(resource_type):
            raise InvalidRequest(f"_elements {element!r}: {resource_type!r} is not a resource type", expression=["_elements"])
        if not name:
            raise InvalidRequest(f"_elements {element!r} names no element", expression=["_elements"])
        request.elements.append(element)
    if values.get("includeAssociatedData"):
        refuse("includeAssociatedData is not supported", "includeAssociatedData")
    if "patient" in values:
        if level == SYSTEM or not posted:
            raise InvalidRequest("patient is accepted in a POSTed Parameters body of a Patient or Group $export only",
                                 expression=["patient"])
        request.patients = [_patient_id(v) for v in values["patient"]]
    request.ignored = [issue.to_fhir() for issue in ignored]
    return request


def _instant(value: str) -> str:
    """An instant with its offset. A `+` that arrived unencoded in the query string is a space by now."""
    text = value.strip().replace(" ", "+")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"_since {value!r} is not an instant (e.g. 2026-11-01T00:00:00+08:00)", expression=["_since"]) from None
    if moment.tzinfo is None:
        raise InvalidRequest(f"_since {value!r} needs a time zone offset (an instant)", expression=["_since"])
    return moment.isoformat()


def _check_filter(resource_type: str, query_string: str) -> None:
    pairs = parse_qsl(query_string, keep_blank_values=True)
    for name, _ in pairs:
        if name.split(":")[0] in ("_include", "_revinclude", "_sort", "_count", "_elements", "_summary", "_total"):
            raise InvalidRequest(f"_typeFilter may not use {name}", expression=["_typeFilter"])
    search = fhir_search.parse(resource_type, pairs)
    if not search.criteria:
        raise InvalidRequest(f"_typeFilter {resource_type}?{query_string} has no search criteria", expression=["_typeFilter"])


def _patient_id(reference: str) -> str:
    patient_id = reference_id({"reference": reference}, "Patient")
    if not patient_id:
        raise InvalidRequest(f"patient {reference!r} must be a reference to a Patient", expression=["patient"])
    return patient_id

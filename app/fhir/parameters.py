"""The input of a POSTed FHIR operation: a Parameters body and any parameters in the URL, as (name, value) pairs."""

from typing import Annotated, Any

from fastapi import Depends, Request

from app.errors import InvalidRequest
from app.fhir import formats


def pairs(body: Any) -> list[tuple[str, str]]:
    """A Parameters resource as (name, value) pairs; a Reference becomes its reference."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequest("the body must be a Parameters resource", expression=["resourceType"])
    found: list[tuple[str, str]] = []
    for i, parameter in enumerate(body.get("parameter") or []):
        name = parameter.get("name") if isinstance(parameter, dict) else None
        values = [v for key, v in (parameter.items() if isinstance(parameter, dict) else []) if key.startswith("value")]
        if not isinstance(name, str) or len(values) != 1:
            raise InvalidRequest("each parameter needs a name and one value[x]", expression=[f"Parameters.parameter[{i}]"])
        value = values[0]
        if isinstance(value, bool):  # valueBoolean, as a URL would say it
            value = "true" if value else "false"
        if isinstance(value, dict):
            value = value.get("reference")
        if not isinstance(value, str | int):
            raise InvalidRequest(f"parameter {name!r} has no usable value", expression=[f"Parameters.parameter[{i}]"])
        found.append((name, str(value)))
    return found


async def posted(request: Request) -> list[tuple[str, str]]:
    """The URL's parameters and the Parameters body's; an operation that needs none may be POSTed without a body."""
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    return request.query_params.multi_items() + (pairs(await formats.read_json(request)) if has_body else [])


PostedParameters = Annotated[list[tuple[str, str]], Depends(posted)]

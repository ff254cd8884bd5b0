"""FHIR R4 REST routes under /fhir: each translates HTTP into one store or interaction call and renders the result."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from app.auth.access import ReadSessionDep, SessionDep
from app.fhir import bundles, capability, formats, interactions
from app.fhir.formats import FhirResponse
from app.fhir.outcomes import information
from app.store import repository as store

router = APIRouter(prefix="/fhir", default_response_class=FhirResponse)


async def json_body(request: Request) -> Any:
    return await formats.read_json(request)


async def patch_body(request: Request) -> Any:
    return await formats.read_json(request, {formats.JSON_PATCH})


async def form_params(request: Request) -> list[tuple[str, str]]:
    return await formats.read_form(request)


JsonBody = Annotated[Any, Depends(json_body)]
FormParams = Annotated[list[tuple[str, str]], Depends(form_params)]
PatchBody = Annotated[Any, Depends(patch_body)]
IfMatch = Annotated[str | None, Header()]
IfNoneExist = Annotated[str | None, Header()]


def _params(request: Request) -> list[tuple[str, str]]:
    return request.query_params.multi_items()


def _lenient(request: Request) -> bool:
    return formats.prefer(request, "handling") == "lenient"


def _written(request: Request, stored: store.Stored, status: int) -> Response:
    return formats.resource_response(
        stored, status=status, base=formats.base_url(request), location=True, return_pref=formats.prefer(request, "return")
    )


@router.get("/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement."""
    return FhirResponse(capability.capability_statement(formats.base_url(request)))


@router.post("")
def batch_or_transaction(request: Request, session: SessionDep, body: JsonBody) -> Response:
    return FhirResponse(bundles.process(session, body, formats.base_url(request)))


@router.get("/_history")
def system_history(request: Request, session: ReadSessionDep) -> Response:
    return FhirResponse(interactions.history(session, _params(request), base=formats.base_url(request)))


@router.get("/{resource_type}")
def search(resource_type: str, request: Request, session: ReadSessionDep) -> Response:
    base = formats.base_url(request)
    return FhirResponse(interactions.search(session, resource_type, _params(request), base=base, lenient=_lenient(request)))


@router.post("/{resource_type}/_search")
def search_by_post(resource_type: str, request: Request, session: ReadSessionDep, form: FormParams) -> Response:
    """Search with form parameters (and any URL parameters)."""
    params = _params(request) + form
    return FhirResponse(
        interactions.search(session, resource_type, params, base=formats.base_url(request), lenient=_lenient(request))
    )


@router.post("/{resource_type}")
def create(resource_type: str, request: Request, session: SessionDep, body: JsonBody, if_none_exist: IfNoneExist = None) -> Response:
    stored = store.create(session, resource_type, body, if_none_exist=if_none_exist)
    return _written(request, stored, 201 if stored.created else 200)


@router.put("/{resource_type}")
def conditional_update(resource_type: str, request: Request, session: SessionDep, body: JsonBody, if_match: IfMatch = None) -> Response:
    stored = store.conditional_update(session, resource_type, _params(request), body, if_match=formats.if_match_version(if_match))
    return _written(request, stored, 201 if stored.created else 200)


@router.delete("/{resource_type}")
def conditional_delete(resource_type: str, request: Request, session: SessionDep) -> Response:
    store.conditional_delete(session, resource_type, _params(request))
    return FhirResponse(information("deleted"))


@router.get("/{resource_type}/_history")
def type_history(resource_type: str, request: Request, session: ReadSessionDep) -> Response:
    body = interactions.history(session, _params(request), base=formats.base_url(request), resource_type=resource_type)
    return FhirResponse(body)


@router.get("/{resource_type}/{resource_id}")
def read(resource_type: str, resource_id: str, session: ReadSessionDep) -> Response:
    return formats.resource_response(store.read(session, resource_type, resource_id))


@router.put("/{resource_type}/{resource_id}")
def update(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, body: JsonBody, if_match: IfMatch = None
) -> Response:
    """Update, or create with the client's id (update-as-create)."""
    stored = store.update(session, resource_type, resource_id, body, if_match=formats.if_match_version(if_match))
    return _written(request, stored, 201 if stored.created else 200)


@router.patch("/{resource_type}/{resource_id}")
def patch(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, body: PatchBody, if_match: IfMatch = None
) -> Response:
    stored = store.patch(session, resource_type, resource_id, body, if_match=formats.if_match_version(if_match))
    return _written(request, stored, 200)


@router.delete("/{resource_type}/{resource_id}")
def delete(resource_type: str, resource_id: str, session: SessionDep) -> Response:
    stored = store.delete_resource(session, resource_type, resource_id)
    headers = {"ETag": stored.etag} if stored else {}
    return FhirResponse(information(f"{resource_type}/{resource_id} deleted"), headers=headers)


@router.get("/{resource_type}/{resource_id}/_history")
def instance_history(resource_type: str, resource_id: str, request: Request, session: ReadSessionDep) -> Response:
    base = formats.base_url(request)
    return FhirResponse(
        interactions.history(session, _params(request), base=base, resource_type=resource_type, resource_id=resource_id)
    )


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
def vread(resource_type: str, resource_id: str, version_id: str, session: ReadSessionDep) -> Response:
    return formats.resource_response(store.vread(session, resource_type, resource_id, version_id))

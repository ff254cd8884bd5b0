"""Bulk Data Access v2 export under /fhir: kick-off at system, Patient and Group level (GET, or POST with
Parameters), the polling URL (status, manifest, cancel) and the files. Registered before the FHIR routes, whose
/fhir/{type}/{id} would take these paths."""

from email.utils import format_datetime

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.responses import JSONResponse

from app.auth.access import PrincipalDep, ReadSessionDep, SessionDep
from app.bulk import jobs, params
from app.config import get_settings
from app.fhir import formats
from app.fhir.formats import FhirResponse
from app.fhir.outcomes import information
from app.fhir.parameters import PostedParameters

router = APIRouter(prefix="/fhir", default_response_class=FhirResponse)
NDJSON = "application/fhir+ndjson"


def _kick_off(request: Request, session: SessionDep, principal: PrincipalDep, level: str, pairs: list[tuple[str, str]],
              *, group_id: str | None = None, posted: bool = False) -> Response:
    lenient = formats.prefer(request, "handling") == "lenient"
    export = params.parse(level, pairs, lenient=lenient, group_id=group_id, posted=posted)
    url = str(request.url) if not posted else str(request.url.remove_query_params(list(request.query_params.keys())))
    job_id = jobs.kick_off(session, principal, export, url, requires_token=get_settings().auth)
    location = f"{formats.base_url(request)}/bulk/{job_id}"
    return FhirResponse(information(f"export {job_id} accepted; poll {location}"), status_code=202,
                        headers={"Content-Location": location})


@router.get("/$export")
def system_export(request: Request, session: SessionDep, principal: PrincipalDep) -> Response:
    return _kick_off(request, session, principal, params.SYSTEM, request.query_params.multi_items())


@router.get("/Patient/$export")
def patient_export(request: Request, session: SessionDep, principal: PrincipalDep) -> Response:
    return _kick_off(request, session, principal, params.PATIENT, request.query_params.multi_items())


@router.get("/Group/{group_id}/$export")
def group_export(group_id: str, request: Request, session: SessionDep, principal: PrincipalDep) -> Response:
    return _kick_off(request, session, principal, params.GROUP, request.query_params.multi_items(), group_id=group_id)


@router.post("/$export")
def system_export_posted(request: Request, session: SessionDep, principal: PrincipalDep, pairs: PostedParameters) -> Response:
    return _kick_off(request, session, principal, params.SYSTEM, pairs, posted=True)


@router.post("/Patient/$export")
def patient_export_posted(request: Request, session: SessionDep, principal: PrincipalDep, pairs: PostedParameters) -> Response:
    return _kick_off(request, session, principal, params.PATIENT, pairs, posted=True)


@router.post("/Group/{group_id}/$export")
def group_export_posted(group_id: str, request: Request, session: SessionDep, principal: PrincipalDep,
                        pairs: PostedParameters) -> Response:
    return _kick_off(request, session, principal, params.GROUP, pairs, group_id=group_id, posted=True)


@router.get("/bulk/{job_id}")
def export_status(job_id: str, request: Request, session: SessionDep, principal: PrincipalDep) -> Response:
    status = jobs.status(session, principal, job_id, formats.base_url(request))
    if status.manifest is None:
        return Response(status_code=202, headers={"X-Progress": status.progress or "", "Retry-After": str(get_settings().bulk_retry_after_seconds)})
    headers = {"Expires": format_datetime(status.expires, usegmt=True)} if status.expires else {}
    return JSONResponse(status.manifest, headers=headers)


@router.delete("/bulk/{job_id}")
def cancel_export(job_id: str, session: SessionDep, principal: PrincipalDep) -> Response:
    jobs.cancel(session, principal, job_id)
    return FhirResponse(information(f"export {job_id} cancelled; its files are deleted"), status_code=202)


@router.get("/bulk/{job_id}/{name}")
def export_file(job_id: str, name: str, session: ReadSessionDep, principal: PrincipalDep) -> Response:
    return FileResponse(jobs.file_path(session, principal, job_id, name), media_type=NDJSON)

"""HTTP for resident matching: IHE PIXm and FHIR $match under /fhir, and what a data steward does under /mpi:
the review queue, merges and unmerges. Registered before the FHIR routes, whose /fhir/{type}/{id} would take these paths."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.auth.access import ReadSessionDep, SessionDep
from app.fhir import formats
from app.fhir.formats import FhirResponse
from app.fhir.routes import JsonBody
from app.mpi import service

router = APIRouter(default_response_class=FhirResponse)


@router.get("/fhir/Patient/$ihe-pix")
def ihe_pix(session: ReadSessionDep, sourceIdentifier: Annotated[str, Query()],  # noqa: N803 (the IHE parameter name)
            targetSystem: Annotated[list[str] | None, Query()] = None) -> Response:  # noqa: N803
    return FhirResponse(service.cross_references(session, sourceIdentifier, targetSystem or []))


@router.post("/fhir/Patient/$match")
def match(request: Request, session: ReadSessionDep, body: JsonBody) -> Response:
    return FhirResponse(service.match(session, body, formats.base_url(request)))


@router.get("/mpi/reviews")
def reviews(session: ReadSessionDep, status: str = "open") -> Response:
    return FhirResponse({"reviews": service.reviews(session, status)})


@router.post("/mpi/reviews/{review_id}")
def decide(review_id: int, session: SessionDep, body: JsonBody) -> Response:
    """Body: {"decision": "same" | "different", "note": "…"}."""
    decision: Any = body.get("decision") if isinstance(body, dict) else None
    note = body.get("note") if isinstance(body, dict) else None
    return FhirResponse(service.decide(session, review_id, str(decision), note))


@router.post("/mpi/merge")
def merge(session: SessionDep, body: JsonBody) -> Response:
    """Body: {"source": "Patient/…", "target": "Patient/…", "note": "…"}: the source's resident joins the target's."""
    fields = body if isinstance(body, dict) else {}
    return FhirResponse(service.merge(session, str(fields.get("source") or ""), str(fields.get("target") or ""), fields.get("note")))


@router.post("/mpi/unmerge")
def unmerge(session: SessionDep, body: JsonBody) -> Response:
    """Body: {"patient": ["Patient/…", …], "note": "…"}: these source records become a resident of their own."""
    fields = body if isinstance(body, dict) else {}
    patients = fields.get("patient") or []
    return FhirResponse(service.unmerge(session, [patients] if isinstance(patients, str) else [str(p) for p in patients], fields.get("note")))

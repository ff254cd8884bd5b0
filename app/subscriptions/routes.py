"""$status and $events (Backport IG) under /fhir/Subscription. Registered before the FHIR routes, whose
/fhir/{type}/{id} would take these paths."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from app.auth.access import ReadSessionDep
from app.fhir.formats import FhirResponse
from app.subscriptions import service

router = APIRouter(prefix="/fhir/Subscription", default_response_class=FhirResponse)


@router.get("/$status")
def statuses(session: ReadSessionDep, id: Annotated[list[str], Query()]) -> Response:  # noqa: A002 (the IG's name)
    ids = [i for value in id for i in value.split(",") if i]
    return FhirResponse(service.statuses(session, ids))


@router.get("/{subscription_id}/$status")
def status(subscription_id: str, session: ReadSessionDep) -> Response:
    return FhirResponse(service.statuses(session, [subscription_id]))


@router.get("/{subscription_id}/$events")
def events(subscription_id: str, session: ReadSessionDep,
           eventsSinceNumber: int | None = None, eventsUntilNumber: int | None = None,  # noqa: N803 (the IG's names)
           content: str | None = None) -> Response:
    return FhirResponse(service.events(session, subscription_id, eventsSinceNumber, eventsUntilNumber, content))

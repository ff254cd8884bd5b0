"""$status and $events (Backport IG), and Qiao's $replay, under /fhir/Subscription. Registered before the FHIR routes, whose
/fhir/{type}/{id} would take these paths."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from app.auth.access import ReadSessionDep, SessionDep
from app.fhir.formats import FhirResponse
from app.fhir.parameters import PostedParameters
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


@router.post("/{subscription_id}/$replay")
def replay(subscription_id: str, session: SessionDep, parameters: PostedParameters) -> Response:
    """Send delivered events again, chosen by number, resource or time (parameters in the URL or a Parameters body)."""
    replayed = service.replay(session, subscription_id, service.selection(parameters))
    return FhirResponse(service.replay_outcome(subscription_id, replayed))

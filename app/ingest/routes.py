"""HTTP for inbound messages: post an HL7 v2 message (answered with its ACK) or an export file (answered with what
became of its rows), list, inspect and replay messages.

Sending is creating data for the source's Organization: it needs `system/MessageHeader.c` and a client of that
Organization; listing needs `.r`, replaying `.u` (the operator's token has all three)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Row
from starlette.concurrency import run_in_threadpool

from app import db
from app.auth import policy
from app.auth.access import PrincipalDep
from app.auth.principal import Principal
from app.errors import Forbidden, InvalidRequest
from app.ingest import files, inbox, pipeline
from app.ingest.sources import Source, sources

router = APIRouter(prefix="/ingest")
MESSAGES = "MessageHeader"
ER7 = "x-application/hl7-v2+er7"
_STATUS = {"AA": 200, "AE": 422, "AR": 400}


@router.post("/hl7v2")
async def post_hl7v2(request: Request, principal: PrincipalDep, source: Annotated[str, Query()]) -> Response:
    """Store and process one HL7 v2 message; the answer is its ACK (200 AA, 422 AE kept as failed, 400 AR)."""
    sender = _source_for(principal, source)
    raw = await request.body()
    if not raw:
        raise InvalidRequest("the body must be one HL7 v2 message", expression=["body"])
    [outcome] = await run_in_threadpool(pipeline.receive, [pipeline.Inbound(raw, "http", pipeline.HL7V2, sender)])
    charset = outcome.record.charset if outcome.record and outcome.record.charset else "utf-8"
    return Response(outcome.ack(), status_code=_STATUS[outcome.ack_code], media_type=f"{ER7}; charset={charset}",
                    headers={"Location": f"{request.base_url}ingest/messages/{outcome.message_id}"})


@router.post("/files")
async def post_file(request: Request, principal: PrincipalDep, source: Annotated[str, Query()],
                    name: Annotated[str, Query(description="the file's name: its extension is the format, its name may give the kind")],
                    kind: str | None = None) -> JSONResponse:
    """Store and process a file as `qiao ingest` does; 200 when every message was applied (or a duplicate), else 422
    with the failed ones (kept: fix and replay them)."""
    sender = _source_for(principal, source)
    data = await request.body()
    if not data:
        raise InvalidRequest("the body must be the file's content", expression=["body"])
    tally = await run_in_threadpool(files.ingest, data, file_name=name, source=sender, channel="http", kind=kind)
    failed = [{"id": o.message_id, "location": o.location, "diagnostics": o.text} for o in tally.failures]
    return JSONResponse({"counts": tally.counts, "failed": failed}, status_code=422 if failed else 200)


@router.get("/messages")
def list_messages(principal: PrincipalDep, state: str | None = None, source: str | None = None, after: int = 0,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    _require(principal, "r")
    if state is not None and state not in inbox.STATES:
        raise InvalidRequest(f"state must be one of {', '.join(inbox.STATES)}", expression=["state"])
    with db.read_session() as session:
        messages = inbox.listing(session, state=state, source=_visible_source(principal, source), after=after, limit=limit)
    return JSONResponse({"messages": messages})


@router.get("/messages/{message_id}")
def get_message(message_id: int, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(inbox.summary(_own_message(principal, message_id, "r")))


@router.post("/messages/{message_id}/$replay")
def replay(message_id: int, principal: PrincipalDep) -> JSONResponse:
    """Process a stored message again (after its mapping, a code table or the source configuration was fixed)."""
    _own_message(principal, message_id, "u")
    outcome = pipeline.process(message_id)
    with db.read_session() as session:
        return JSONResponse(inbox.summary(inbox.load(session, outcome.message_id)))


def _own_message(principal: Principal, message_id: int, interaction: str) -> Row[Any]:
    _require(principal, interaction)
    with db.read_session() as session:
        row = inbox.load(session, message_id)
    _require_own(principal, row.source)
    return row


def _require(principal: Principal, interaction: str) -> None:
    if not policy.may(principal, MESSAGES, interaction):
        raise Forbidden(f"inbound messages need the scope system/{MESSAGES}.{interaction}", expression=[MESSAGES])


def _source_for(principal: Principal, name: str) -> Source:
    _require(principal, "c")
    source = sources().get(name)
    if source is None:
        raise InvalidRequest(f"unknown source {name!r} (configured: {', '.join(sorted(sources()))})", expression=["source"])
    _require_own(principal, source.name)
    return source


def _require_own(principal: Principal, source_name: str) -> None:
    source = sources().get(source_name)
    if principal.unrestricted or (source is not None and source.organization == principal.organization):
        return
    raise Forbidden(f"source {source_name!r} belongs to another organization", expression=["source"])


def _visible_source(principal: Principal, source: str | None) -> str | None:
    if source is not None:
        _require_own(principal, source)
        return source
    if principal.unrestricted:
        return None
    own = [s.name for s in sources().values() if s.organization == principal.organization]
    if len(own) != 1:
        raise InvalidRequest("name the source to list (?source=…)", expression=["source"])
    return own[0]

"""create_app(): routers, exception handlers and lifespan. No logic."""

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from adapters.hl7v2 import mllp
from app import clock
from app.auth import audit_store, audit_trail
from app.auth import routes as auth_routes
from app.auth.principal import Principal
from app.auth.scopes import Scopes
from app.bulk import routes as bulk_routes
from app.bulk import worker as bulk_worker
from app.cdc import routes as cdc_routes
from app.config import get_settings
from app.errors import Forbidden, Issue, QiaoError, Unauthorized
from app.fhir import routes as fhir_routes
from app.fhir.formats import FhirResponse
from app.fhir.outcomes import from_error, operation_outcome
from app.ingest import pipeline
from app.ingest import routes as ingest_routes
from app.ingest.gathering import Gathering
from app.logging import fields
from app.mapping import routes as mapping_routes
from app.mpi import routes as mpi_routes
from app.periodic import Periodic
from app.subscriptions import delivery, outbox
from app.subscriptions import routes as subscription_routes

log = logging.getLogger("qiao")

_INTERACTIONS = {"GET": "read", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_HTTP_ISSUE_CODES = {404: "not-found", 405: "not-supported", 406: "not-supported", 413: "too-costly", 415: "not-supported"}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.handler_threads
    writer = audit_store.Writer(settings.audit_flush_seconds)
    writer.start()
    deliverer = delivery.Worker()
    outbox.on_commit(deliverer.wake)
    deliverer.start()
    exporter = Periodic("bulk", settings.bulk_poll_seconds, bulk_worker.Worker().run_once)
    exporter.start()
    ticker = Periodic("clock", settings.clock_seconds, lambda _stopping: clock.run())
    ticker.start()
    gathering = Gathering(_mllp_messages, limit=settings.mllp_batch)
    listener = await mllp.serve(settings.mllp_host, settings.mllp_port, gathering.submit) if settings.mllp_port else None
    try:
        yield
    finally:
        if listener is not None:
            listener.close()
        await anyio.to_thread.run_sync(ticker.stop)
        await anyio.to_thread.run_sync(exporter.stop)
        outbox.forget(deliverer.wake)
        await anyio.to_thread.run_sync(deliverer.stop)
        await anyio.to_thread.run_sync(writer.stop)


def _mllp_messages(messages: list[bytes]) -> list[bytes]:
    return [outcome.ack() for outcome in pipeline.receive([pipeline.Inbound(raw, "mllp") for raw in messages])]


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(title="Qiao", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    if settings.cors_origins:
        origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["ETag", "Location", "Content-Location"])
    app.include_router(auth_routes.router)  # before the FHIR routes: /fhir/auth/token is no resource type
    app.include_router(mpi_routes.router)  # before the FHIR routes: /fhir/Patient/$match is no resource id
    app.include_router(subscription_routes.router)  # likewise /fhir/Subscription/{id}/$status
    app.include_router(cdc_routes.analyst_router)
    app.include_router(cdc_routes.router)  # likewise /fhir/Group/hypertension-registry (composed when read)
    app.include_router(mapping_routes.router)  # likewise /fhir/ConceptMap/{id} (the code tables, not stored)
    app.include_router(bulk_routes.router)  # likewise /fhir/$export, /fhir/Group/{id}/$export and /fhir/bulk/…
    app.include_router(fhir_routes.router)
    app.include_router(ingest_routes.router)
    app.add_exception_handler(QiaoError, _qiao_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _qiao_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, QiaoError)
    if isinstance(error, Unauthorized | Forbidden):
        _audit_refusal(request, error)
    return FhirResponse(from_error(error), status_code=error.status, headers=error.headers)


def _audit_refusal(request: Request, error: QiaoError) -> None:
    """Refused requests are audited too (outcome: minor failure), with whatever is known of the caller."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        address = request.client.host if request.client else None
        principal = Principal("unauthenticated", None, Scopes(()), address=address)
    audit_trail.record(principal, _INTERACTIONS.get(request.method, "read"), query=f"{request.method} {request.url.path}",
                       outcome=audit_trail.MINOR_FAILURE, description=error.message)


async def _validation_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    issues = [
        Issue("error", "invalid", str(item.get("msg")), [".".join(str(p) for p in item.get("loc", ()))])
        for item in error.errors()
    ]
    return FhirResponse(operation_outcome(issues), status_code=400)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    code = _HTTP_ISSUE_CODES.get(error.status_code, "processing")
    message = f"{request.method} {request.url.path}: {error.detail}"
    return FhirResponse(operation_outcome([Issue("error", code, message)]), status_code=error.status_code)


async def _unexpected_error(request: Request, error: Exception) -> Response:
    """A 500 names a reference for the logs, never the stack trace or the data."""
    reference = uuid.uuid4().hex[:12]
    log.error("request.failed", exc_info=error, extra=fields(reference=reference, method=request.method, path=request.url.path))
    issue = Issue("fatal", "exception", f"internal error; reference {reference}")
    return FhirResponse(operation_outcome([issue]), status_code=500)

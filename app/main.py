"""create_app(): routers, exception handlers and lifespan. No logic."""

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.config import get_settings
from app.errors import Issue, QiaoError
from app.fhir import routes as fhir_routes
from app.fhir.formats import FhirResponse
from app.fhir.outcomes import from_error, operation_outcome
from app.logging import fields

log = logging.getLogger("qiao")

_HTTP_ISSUE_CODES = {404: "not-found", 405: "not-supported", 406: "not-supported", 413: "too-costly", 415: "not-supported"}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = get_settings().handler_threads
    yield


def create_app() -> FastAPI:
    app = FastAPI(title="Qiao", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.include_router(fhir_routes.router)
    app.add_exception_handler(QiaoError, _qiao_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _qiao_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, QiaoError)
    return FhirResponse(from_error(error), status_code=error.status, headers=error.headers)


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

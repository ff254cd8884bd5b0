"""FastAPI dependencies: the request's Principal (from its bearer token) and sessions that carry it to the store."""

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app import db
from app.auth import smart
from app.auth.principal import UNRESTRICTED, Principal
from app.auth.scopes import Scopes
from app.config import get_settings
from app.errors import Unauthorized

#: Every request when QIAO_AUTH=false (loopback only; `qiao serve` refuses otherwise).
ANONYMOUS = Principal("anonymous", None, Scopes((("*", "cruds"),)), access=UNRESTRICTED)


async def current_principal(request: Request) -> Principal:
    """A token seen before is checked without I/O or a thread hop; a new one may need the signing key from the
    database, so it is verified in the thread pool."""
    address = request.client.host if request.client else None
    if not get_settings().auth:
        principal = ANONYMOUS
    else:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("a bearer token is required (SMART Backend Services; see /fhir/.well-known/smart-configuration)",
                               expression=["Authorization"])
        cached = smart.cached_principal(token, address)
        principal = cached if cached is not None else await run_in_threadpool(_verify, token, address)
    request.state.principal = principal
    return principal


def _verify(token: str, address: str | None) -> Principal:
    with db.read_session() as session:
        return smart.principal(session, token, address)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def write_session(principal: PrincipalDep) -> Iterator[Session]:
    with db.transaction({"principal": principal}) as session:
        yield session


async def read_session(principal: PrincipalDep) -> AsyncIterator[Session]:
    """Async on purpose: opening and closing an autocommit session does no I/O, so it needs no thread-pool hop."""
    with db.read_session({"principal": principal}) as session:
        yield session


#: scope="function": the commit happens before the response is sent, so a client never sees a success that was not
#: committed (FastAPI's default request scope runs the exit code after the response).
SessionDep = Annotated[Session, Depends(write_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(read_session, scope="function")]

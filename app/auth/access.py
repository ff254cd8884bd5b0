"""FastAPI dependencies: the request's Principal (from its bearer token) and sessions that carry it to the store."""

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app import db
from app.auth import smart
from app.auth.principal import UNRESTRICTED, Principal
from app.auth.scopes import Scopes
from app.config import get_settings
from app.errors import Unauthorized

#: Every request when QIAO_AUTH=false (loopback only; `qiao serve` refuses otherwise).
ANONYMOUS = Principal("anonymous", None, Scopes((("*", "cruds"),)), access=UNRESTRICTED)


def current_principal(request: Request) -> Principal:
    """Sync on purpose: checking a token may read the signing key from the database (the first time per key)."""
    address = request.client.host if request.client else None
    if not get_settings().auth:
        principal = ANONYMOUS
    else:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a bearer token is required (SMART Backend Services; see /fhir/.well-known/smart-configuration)",
                               expression=["Authorization"])
        with db.read_session() as session:
            principal = smart.principal(session, token.strip(), address)
    request.state.principal = principal
    return principal


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

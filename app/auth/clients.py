"""Registered clients (SMART Backend Services): the Organization each acts for, the scopes it may be granted, its
access level and its public keys (an inline JWK Set or a JWKS URL, fetched when a token is asked for)."""

from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import scopes as scope_syntax
from app.auth.principal import ACCESS_LEVELS, ORGANIZATION
from app.auth.tables import auth_client
from app.endpoints import is_secure_url
from app.errors import InvalidRequest
from app.store import dates

KEY_TYPES = {"RSA", "EC"}


@dataclass(frozen=True)
class Client:
    client_id: str
    organization: str
    scope: str
    access: str
    break_glass: bool
    jwks: dict[str, Any] | None
    jwks_url: str | None
    active: bool


def add(
    session: Session,
    client_id: str,
    *,
    organization: str,
    scope: str,
    jwks: dict[str, Any] | None = None,
    jwks_url: str | None = None,
    access: str = ORGANIZATION,
    break_glass: bool = False,
) -> Client:
    """Register a client, or replace its registration (new keys, scopes or organization)."""
    if not client_id or len(client_id) > 64 or not client_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InvalidRequest("client id: 1-64 letters, digits, - _ .", expression=["client_id"])
    organization = organization.removeprefix("Organization/")
    if not organization or len(organization) > 64:
        raise InvalidRequest("organization must be an Organization id (Organization/<id>)", expression=["organization"])
    if access not in ACCESS_LEVELS:
        raise InvalidRequest(f"access must be one of {', '.join(ACCESS_LEVELS)}", expression=["access"])
    scope_syntax.parse(scope)
    if (jwks is None) == (jwks_url is None):
        raise InvalidRequest("give exactly one of a JWK Set or a JWKS URL", expression=["jwks"])
    if jwks is not None:
        check_jwks(jwks)
    if jwks_url is not None:
        check_endpoint_url(jwks_url)
    row = {"organization": organization, "scope": scope, "access": access, "break_glass": break_glass,
           "jwks": orjson.dumps(jwks).decode() if jwks else None, "jwks_url": jwks_url, "active": True}
    if get(session, client_id) is None:
        session.execute(auth_client.insert().values(client_id=client_id, created_at=dates.now(), **row))
    else:
        session.execute(auth_client.update().where(auth_client.c.client_id == client_id).values(**row))
    client = get(session, client_id)
    assert client is not None
    return client


def get(session: Session, client_id: str) -> Client | None:
    row = session.execute(select(auth_client).where(auth_client.c.client_id == client_id)).first()
    if row is None:
        return None
    return Client(row.client_id, row.organization, row.scope, row.access, row.break_glass,
                  orjson.loads(row.jwks) if row.jwks else None, row.jwks_url, row.active)


def check_jwks(jwks: Any) -> None:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise InvalidRequest("a JWK Set is an object with a non-empty `keys` list", expression=["jwks"])
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or key.get("kty") not in KEY_TYPES or not key.get("kid"):
            raise InvalidRequest(f"key {i} needs kty (RSA or EC) and kid", expression=[f"jwks.keys[{i}]"])
        if "d" in key or "p" in key:
            raise InvalidRequest(f"key {i} is a private key: register public keys only", expression=[f"jwks.keys[{i}]"])


def check_endpoint_url(url: str) -> None:
    if not is_secure_url(url):
        raise InvalidRequest(f"{url!r} must be https (http only on loopback)", expression=["jwks_url"])


def public_keys(client: Client) -> list[dict[str, Any]]:
    """The client's current public keys; a JWKS URL is fetched each time (tokens are asked for every few minutes,
    and the spec forbids caching beyond what the client allows)."""
    if client.jwks is not None:
        return list(client.jwks["keys"])
    assert client.jwks_url is not None
    response = httpx.get(client.jwks_url, timeout=5.0, follow_redirects=False)
    response.raise_for_status()
    jwks = response.json()
    check_jwks(jwks)
    return list(jwks["keys"])

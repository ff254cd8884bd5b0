"""SMART Backend Services (App Launch 2.x `backend-services`): the client-credentials grant with a signed JWT
assertion (RFC 7523, RS384 or ES384) in, a short-lived bearer token out; and the bearer token back to a Principal.

JWT handling is PyJWT's (signature, `exp`, `aud`, `iss` checks); Qiao adds the SMART rules: one key by kid and
kty, `sub` = `iss`, `exp` at most 5 minutes ahead, `jti` never reused.
"""

import secrets
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import httpx
import jwt
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import clients
from app.auth import scopes as scope_syntax
from app.auth.principal import EMERGENCY, PURPOSES, TREATMENT, Principal
from app.auth.tables import auth_jti, auth_key
from app.config import get_settings
from app.errors import InvalidRequest, Unauthorized
from app.store import dates

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = {"RS384": "RSA", "ES384": "EC"}
MAX_ASSERTION_LIFETIME = 300
LEEWAY = 30
ISSUER = "qiao"
TOKEN_ALGORITHM = "HS256"


@dataclass
class TokenError(Exception):
    """An OAuth 2.0 error response (RFC 6749 §5.2)."""

    error: str
    description: str
    status: int = 400

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def issue(session: Session, form: dict[str, str], token_url: str) -> dict[str, Any]:
    """The token endpoint: check the grant and the client's assertion, then grant the requested scopes it may have."""
    if form.get("grant_type") != "client_credentials":
        raise TokenError("unsupported_grant_type", "grant_type must be client_credentials")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise TokenError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
    if not form.get("scope"):
        raise TokenError("invalid_request", "scope is required")
    client = authenticate(session, form.get("client_assertion", ""), token_url)
    try:
        granted = scope_syntax.granted(scope_syntax.parse(form["scope"]), scope_syntax.parse(client.scope))
    except InvalidRequest as error:
        raise TokenError("invalid_scope", error.message) from None
    if not granted.grants:
        raise TokenError("invalid_scope", f"none of the requested scopes is allowed for client {client.client_id}")
    purpose = form.get("purpose_of_use") or TREATMENT
    if purpose not in PURPOSES:
        raise TokenError("invalid_request", f"purpose_of_use must be one of {', '.join(sorted(PURPOSES))}")
    if purpose in EMERGENCY and not client.break_glass:
        raise TokenError("invalid_scope", f"client {client.client_id} may not break the glass")
    lifetime = get_settings().token_lifetime
    token = mint(session, client.client_id, client.organization, str(granted), access=client.access, purpose=purpose, lifetime=lifetime)
    return {"access_token": token, "token_type": "bearer", "expires_in": lifetime, "scope": str(granted)}


def authenticate(session: Session, assertion: str, token_url: str) -> clients.Client:
    """The registered, active client whose key signed this assertion; TokenError(invalid_client) otherwise."""
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError("invalid_client", "client_assertion is not a JWT", 401) from None
    algorithm = header.get("alg")
    if algorithm not in ASSERTION_ALGORITHMS:
        raise TokenError("invalid_client", f"alg must be one of {', '.join(ASSERTION_ALGORITHMS)}, not {algorithm!r}", 401)
    client_id = unverified.get("iss")
    client = clients.get(session, client_id) if isinstance(client_id, str) else None
    if client is None or not client.active:
        raise TokenError("invalid_client", "the assertion's iss is not a registered client", 401)
    if header.get("jku") is not None and header["jku"] != client.jwks_url:
        raise TokenError("invalid_client", "jku is not the client's registered JWKS URL", 401)
    try:
        keys = clients.public_keys(client)
    except (httpx.HTTPError, ValueError, InvalidRequest):
        raise TokenError("invalid_client", "the client's JWKS URL did not give a JWK Set", 401) from None
    matching = [k for k in keys if k.get("kid") == header.get("kid") and k.get("kty") == ASSERTION_ALGORITHMS[algorithm]]
    if len(matching) != 1:
        raise TokenError("invalid_client", f"no single {ASSERTION_ALGORITHMS[algorithm]} key with kid {header.get('kid')!r}", 401)
    try:
        key = jwt.PyJWK(matching[0], algorithm=algorithm).key
        claims = jwt.decode(
            assertion, key, algorithms=[algorithm], audience=token_url, issuer=client.client_id, leeway=LEEWAY,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
    except jwt.PyJWTError as error:
        raise TokenError("invalid_client", f"client_assertion rejected: {error}", 401) from None
    if claims["sub"] != client.client_id:
        raise TokenError("invalid_client", "sub must equal iss (the client_id)", 401)
    if claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME + LEEWAY:
        raise TokenError("invalid_client", "exp is more than 5 minutes ahead", 401)
    _use_jti(session, client.client_id, str(claims["jti"]), claims["exp"])
    return client


def _use_jti(session: Session, client_id: str, jti: str, expires: float) -> None:
    """Remember the assertion id until it expires; a second use within that time is a replay."""
    session.execute(delete(auth_jti).where(auth_jti.c.expires_at < dates.now()))
    try:
        with session.begin_nested():
            session.execute(insert(auth_jti).values(client_id=client_id, jti=jti[:255],
                                                    expires_at=dates.from_micros(int((expires + LEEWAY) * 1_000_000))))
    except IntegrityError:
        raise TokenError("invalid_client", "this client_assertion's jti was used before (replay)", 401) from None


def mint(session: Session, client_id: str, organization: str | None, scope: str, *, access: str, purpose: str, lifetime: int) -> str:
    """A bearer token for the given grant, signed with this server's key (HS256, shared by every worker)."""
    kid, secret = _signing_key(session)
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": client_id, "org": organization, "scope": scope, "access": access, "purpose": purpose,
              "iat": now, "exp": now + lifetime, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM, headers={"kid": kid})


def _signing_key(session: Session) -> tuple[str, str]:
    row = session.execute(select(auth_key.c.kid, auth_key.c.secret).order_by(auth_key.c.created_at.desc()).limit(1)).first()
    if row is not None:
        return row.kid, row.secret
    kid, secret = uuid.uuid4().hex[:16], secrets.token_urlsafe(48)
    session.execute(insert(auth_key).values(kid=kid, secret=secret, created_at=dates.now()))
    return kid, secret


_verification_keys: dict[str, str] = {}
#: Tokens already verified (a client reuses its token for minutes): PyJWT's checks cost ~120 µs, a look-up ~1 µs.
_verified: dict[str, tuple[Principal, float]] = {}
MAX_VERIFIED = 10_000


def cached_principal(token: str, address: str | None) -> Principal | None:
    """The Principal of a token verified before and not yet expired, without I/O; None otherwise. It is kept with
    the address it was last used from (a client calls from one): a new Principal per request cost ~5 µs."""
    found = _verified.get(token)
    if found is None or found[1] <= time.time():
        return None
    known, expires = found
    if known.address != address:
        known = replace(known, address=address)
        _verified[token] = known, expires
    return known


def principal(session: Session, token: str, address: str | None = None) -> Principal:
    """The Principal a bearer token stands for; Unauthorized when it is malformed, forged or expired."""
    cached = cached_principal(token, address)
    if cached is not None:
        return cached
    verified = _verify(session, token)
    if len(_verified) >= MAX_VERIFIED:
        _verified.clear()
    _verified[token] = verified
    return replace(verified[0], address=address)


def _verify(session: Session, token: str) -> tuple[Principal, float]:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise Unauthorized("the bearer token is not a token this server issued", expression=["Authorization"]) from None
    secret = _verification_keys.get(kid) if isinstance(kid, str) else None
    if secret is None and isinstance(kid, str):
        row = session.execute(select(auth_key.c.secret).where(auth_key.c.kid == kid)).first()
        if row is not None:
            secret = _verification_keys[kid] = row.secret
    if secret is None:
        raise Unauthorized("the bearer token was not signed by this server", expression=["Authorization"])
    try:
        claims = jwt.decode(token, secret, algorithms=[TOKEN_ALGORITHM], issuer=ISSUER, options={"require": ["exp", "sub", "scope"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the bearer token has expired", expression=["Authorization"]) from None
    except jwt.PyJWTError as error:
        raise Unauthorized(f"the bearer token is invalid: {error}", expression=["Authorization"]) from None
    verified = Principal(claims["sub"], claims.get("org"), scope_syntax.parse(claims["scope"]),
                         access=claims.get("access", "organization"), purpose=claims.get("purpose", TREATMENT))
    return verified, float(claims["exp"])

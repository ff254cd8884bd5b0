"""The OAuth side of SMART Backend Services: discovery and the token endpoint (OAuth JSON, not FHIR, on the wire)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app import db
from app.auth import smart
from app.auth.smart import TokenError
from app.errors import UnsupportedMediaType
from app.fhir import formats

router = APIRouter(prefix="/fhir")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def token_url(request: Request) -> str:
    return formats.base_url(request) + "/auth/token"


@router.get("/.well-known/smart-configuration")
def smart_configuration(request: Request) -> dict[str, Any]:
    return {
        "token_endpoint": token_url(request),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": sorted(smart.ASSERTION_ALGORITHMS),
        "scopes_supported": ["system/*.rs", "system/*.cruds", "system/*.read", "system/*.write", "system/AuditEvent.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }


async def form_fields(request: Request) -> dict[str, str] | None:
    """The posted form; None when the body is not application/x-www-form-urlencoded (an OAuth error, not a 415)."""
    try:
        return dict(await formats.read_form(request))
    except UnsupportedMediaType:
        return None


@router.post("/auth/token")
def token(request: Request, form: Annotated[dict[str, str] | None, Depends(form_fields)]) -> Response:
    """client_credentials with a JWT assertion → a bearer token (SMART Backend Services)."""
    try:
        if form is None:
            raise TokenError("invalid_request", f"the token request is a form ({formats.FORM})")
        with db.transaction() as session:
            body = smart.issue(session, form, token_url(request))
    except TokenError as error:
        return JSONResponse(error.body(), status_code=error.status, headers=NO_STORE)
    return JSONResponse(body, headers=NO_STORE)

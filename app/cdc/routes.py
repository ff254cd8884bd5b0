"""The CDC's registries and indicators under /fhir. Registered before the FHIR routes, whose /fhir/{type}/{id}
would take the registries' fixed Group ids."""

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import Response

from app.auth import audit_trail
from app.auth.access import PrincipalDep, ReadSessionDep
from app.cdc import registries
from app.fhir import formats
from app.fhir.formats import FhirResponse

router = APIRouter(prefix="/fhir", default_response_class=FhirResponse)


def _registry_read(registry: registries.Registry) -> Callable[..., Response]:
    def read(session: ReadSessionDep, principal: PrincipalDep) -> Response:
        """The registry Group, its members composed from the registry entries the client may see (audited as one
        read of the Group, like an export: not one event entity per member)."""
        stored = registries.group(session, registry, principal)
        audit_trail.record(principal, "read", resources=[stored.versioned_reference], query=f"Group/{registry.id}")
        return formats.resource_response(stored)

    return read


for _registry in registries.REGISTRIES.values():
    router.add_api_route(f"/Group/{_registry.id}", _registry_read(_registry), methods=["GET"], summary=f"Read {_registry.id}")

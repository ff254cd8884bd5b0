"""The CDC's registries and indicators under /fhir. Registered before the FHIR routes, whose /fhir/{type}/{id}
would take the registries' fixed Group ids."""

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.auth import audit_trail, policy
from app.auth.access import PrincipalDep, ReadSessionDep
from app.auth.principal import Principal
from app.auth.relations import reference_id
from app.cdc import analyst, indicators, registries, reports
from app.errors import InvalidRequest
from app.fhir import formats
from app.fhir.formats import FhirResponse
from app.store import dates

router = APIRouter(prefix="/fhir", default_response_class=FhirResponse)
analyst_router = APIRouter(prefix="/cdc")


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


@router.get("/Measure")
def list_measures(request: Request, principal: PrincipalDep) -> Response:
    """The indicators, as a searchset of Measures (they are Qiao's own, not stored)."""
    policy.require(principal, "Measure", "s")
    base = formats.base_url(request)
    found = [reports.measure(i, base) for i in indicators.INDICATORS.values()]
    return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                         "link": [{"relation": "self", "url": f"{base}/Measure"}],
                         "entry": [{"fullUrl": f"{base}/Measure/{m['id']}", "resource": m, "search": {"mode": "match"}} for m in found]})


@router.get("/Measure/{measure_id}")
def read_measure(measure_id: str, request: Request, principal: PrincipalDep) -> Response:
    policy.require(principal, "Measure", "r")
    return FhirResponse(reports.measure(indicators.indicator(measure_id), formats.base_url(request)))


@router.get("/Measure/{measure_id}/$evaluate-measure")
def evaluate_measure(measure_id: str, request: Request, session: ReadSessionDep, principal: PrincipalDep) -> Response:
    """A summary (reportType=population, the default) or subject-list MeasureReport for the period; `subject` an
    Organization, or Qiao's `district` (a GB/T 2260 county code), narrows it to the cases counted there."""
    indicator = indicators.indicator(measure_id)
    params = request.query_params
    policy.require(principal, "Measure", "r")
    period = indicators.period(params.get("periodStart"), params.get("periodEnd"))
    report_type = params.get("reportType", "population")
    if report_type not in ("population", "subject-list"):
        raise InvalidRequest(f"reportType {report_type!r} is not supported; use population (a summary) or subject-list",
                             expression=["reportType"])
    organization = None
    if params.get("subject"):
        organization = reference_id({"reference": params["subject"]}, "Organization")
        if organization is None:
            raise InvalidRequest("subject must be an Organization (Organization/{id}); for a district use district={code}",
                                 expression=["subject"])
    district = indicators.district(params.get("district"))
    cases = indicators.within(indicators.evaluate(session, indicator, period, principal, indicators.Rules.configured()),
                              organization, district)
    subject_list = report_type == "subject-list"
    content = reports.report(indicator, cases, base=formats.base_url(request),
                             period={"start": params["periodStart"], "end": params["periodEnd"]}, subject_list=subject_list,
                             reporter=organization or principal.organization, generated=dates.now())
    listed = [c.subject.removeprefix("Patient/") for c in cases if subject_list and c.subject.startswith("Patient/")]
    _audit(principal, request, patients=listed)
    return FhirResponse(content)


@analyst_router.get("/indicators")
def indicator_table(request: Request, session: ReadSessionDep, principal: PrincipalDep, year: int, district: str | None = None) -> Response:
    """A year's indicators for a district (or every district the client sees) as CSV: the district's figure, then
    each centre's."""
    policy.require(principal, "Measure", "r")
    rows = analyst.table(session, principal, year, district, indicators.Rules.configured())
    _audit(principal, request)
    return Response(analyst.as_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'inline; filename="indicators-{year}{"-" + district if district else ""}.csv"'})


@analyst_router.get("/control-rates")
def control_rate_chart(request: Request, session: ReadSessionDep, principal: PrincipalDep, year: int,
                       programme: str = "hypertension", district: str | None = None) -> Response:
    """The control rate per community centre by quarter, as an SVG chart."""
    policy.require(principal, "Measure", "r")
    chart = analyst.control_chart(session, principal, year, district, programme, indicators.Rules.configured())
    _audit(principal, request)
    return Response(chart, media_type="image/svg+xml")


def _audit(principal: Principal, request: Request, patients: list[str] | None = None) -> None:
    """An evaluation is an operation on the residents it counts; the audit keeps the query that asked for it."""
    audit_trail.record(principal, "operation", patients=patients or [], query=f"{request.url.path}?{request.url.query}")

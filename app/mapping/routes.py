"""ConceptMaps under /fhir: the code tables, listed, read and used by $translate. Registered before the FHIR routes,
whose /fhir/{type}/{id} would take $translate for an id."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.auth import policy
from app.auth.access import PrincipalDep
from app.fhir import formats
from app.fhir.formats import FhirResponse
from app.fhir.parameters import PostedParameters
from app.mapping import concept_maps

router = APIRouter(prefix="/fhir", default_response_class=FhirResponse)


@router.get("/ConceptMap")
def search_concept_maps(request: Request, principal: PrincipalDep) -> Response:
    policy.require(principal, "ConceptMap", "s")
    base = formats.base_url(request)
    found = concept_maps.search(request.query_params.multi_items())
    return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                         "link": [{"relation": "self", "url": str(request.url)}],
                         "entry": [{"fullUrl": f"{base}/ConceptMap/{m['id']}", "resource": m, "search": {"mode": "match"}} for m in found]})


@router.api_route("/ConceptMap/$translate", methods=["GET", "POST"])
def translate(params: PostedParameters, principal: PrincipalDep) -> Response:
    policy.require(principal, "ConceptMap", "r")
    return FhirResponse(concept_maps.translate(params))


@router.api_route("/ConceptMap/{map_id}/$translate", methods=["GET", "POST"])
def translate_with(map_id: str, params: PostedParameters, principal: PrincipalDep) -> Response:
    policy.require(principal, "ConceptMap", "r")
    return FhirResponse(concept_maps.translate(params, map_id))


@router.get("/ConceptMap/{map_id}")
def read_concept_map(map_id: str, principal: PrincipalDep) -> Response:
    policy.require(principal, "ConceptMap", "r")
    return FhirResponse(concept_maps.concept_map(concept_maps.find(map_id)))

"""ConceptMaps under /fhir: the code tables, listed, read and used by $translate; and Questionnaires: the forms the
mappings fill. Registered before the FHIR routes, whose /fhir/{type}/{id} would take $translate for an id."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.auth import policy
from app.auth.access import PrincipalDep
from app.fhir import formats
from app.fhir.formats import FhirResponse
from app.fhir.parameters import PostedParameters
from app.mapping import concept_maps, questionnaires

router = APIRouter(prefix="/fhir", default_response_class=FhirResponse)


@router.get("/ConceptMap")
def search_concept_maps(request: Request, principal: PrincipalDep) -> Response:
    policy.require(principal, "ConceptMap", "s")
    return _searchset(request, "ConceptMap", concept_maps.search(request.query_params.multi_items()))


@router.get("/Questionnaire")
def search_questionnaires(request: Request, principal: PrincipalDep) -> Response:
    policy.require(principal, "Questionnaire", "s")
    return _searchset(request, "Questionnaire", questionnaires.search(request.query_params.multi_items()))


@router.get("/Questionnaire/{questionnaire_id}")
def read_questionnaire(questionnaire_id: str, principal: PrincipalDep) -> Response:
    policy.require(principal, "Questionnaire", "r")
    return FhirResponse(questionnaires.find(questionnaire_id))


def _searchset(request: Request, resource_type: str, found: list[dict[str, Any]]) -> Response:
    base = formats.base_url(request)
    return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                         "link": [{"relation": "self", "url": str(request.url)}],
                         "entry": [{"fullUrl": f"{base}/{resource_type}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                                   for r in found]})


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

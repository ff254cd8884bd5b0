"""GET /fhir/metadata: a CapabilityStatement built from what the server really registers."""

from copy import deepcopy
from functools import cache
from typing import Any

from app import __doc__ as product_description
from app.config import get_settings
from app.fhir import resources
from app.store.search_parameters import SPECIAL, parameters_for

SOFTWARE_VERSION = "0.1.0"
BACKPORT_IG = "http://hl7.org/fhir/uv/subscriptions-backport"
BACKPORT_SERVER = f"{BACKPORT_IG}/CapabilityStatement/CapabilitySubscriptionServer"
TOPIC_CANONICAL = f"{BACKPORT_IG}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
BULK_IG = "http://hl7.org/fhir/uv/bulkdata"
TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]


@cache
def _statement() -> dict[str, Any]:
    rest_resources = []
    for resource_type in resources.resource_types():
        parameters = parameters_for(resource_type)
        references = sorted(name for name, p in parameters.items() if p.type == "reference")
        rest_resources.append(
            {
                "type": resource_type,
                "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalRead": "not-supported",
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "searchInclude": [f"{resource_type}:{name}" for name in references],
                "searchRevInclude": ["*:subject", "*:patient", "*:focus"] if resource_type != "Bundle" else [],
                "searchParam": [
                    {"name": name, "type": kind} for name, kind in SPECIAL.items()
                ] + [{"name": name, "type": p.type} for name, p in sorted(parameters.items())],
            }
        )
    _declare_subscriptions(rest_resources)
    _declare_bulk_export(rest_resources)
    _declare_measures(rest_resources)
    return {
        "resourceType": "CapabilityStatement",
        "instantiates": [BACKPORT_SERVER, f"{BULK_IG}/CapabilityStatement/bulk-data"],
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "Qiao", "version": SOFTWARE_VERSION},
        "implementation": {"description": product_description or "Qiao"},
        "fhirVersion": resources.FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": f"Resources validate with fhir.resources ({resources.MODEL_PACKAGE} models) "
                "and are served as FHIR R4 (4.0.1).",
                "resource": rest_resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
                "searchParam": [{"name": "_count", "type": "number"}, {"name": "_sort", "type": "string"}],
                "operation": [{"name": "export", "definition": f"{BULK_IG}/OperationDefinition/export"}],
            }
        ],
    }


def _declare_subscriptions(rest_resources: list[dict[str, Any]]) -> None:
    """The Backport IG's conformance: its Subscription profile, the topics by canonical, $status and $events; and
    Qiao's $replay."""
    from app.subscriptions import registry, topics

    subscription = next(r for r in rest_resources if r["type"] == "Subscription")
    subscription["supportedProfile"] = [registry.PROFILE]
    subscription["extension"] = [{"url": TOPIC_CANONICAL, "valueCanonical": url} for url in topics.TOPICS]
    subscription["operation"] = [{"name": name, "definition": f"{BACKPORT_IG}/OperationDefinition/backport-subscription-{name}"}
                                 for name in ("status", "events")]
    subscription["operation"].append({"name": "replay", "definition": "urn:qiao:operation:subscription-replay",
                                      "documentation": "POST: send delivered events again, chosen by eventsSinceNumber, "
                                                       "eventsUntilNumber, resourceType, focus, eventsSinceTime, eventsUntilTime"})


def _declare_bulk_export(rest_resources: list[dict[str, Any]]) -> None:
    """Bulk Data Access v2: $export on Patient and Group (the system level is declared on `rest`)."""
    for resource in rest_resources:
        if resource["type"] in ("Patient", "Group"):
            definition = f"{BULK_IG}/OperationDefinition/{resource['type'].lower()}-export"
            resource.setdefault("operation", []).append({"name": "export", "definition": definition})


def _declare_measures(rest_resources: list[dict[str, Any]]) -> None:
    """Measures are Qiao's indicators, ConceptMaps its code tables and Questionnaires the forms its mappings fill:
    read, listed and used, never written."""
    for resource_type, operation, search in (
        ("Measure", "evaluate-measure", None),
        ("ConceptMap", "translate", [("url", "uri"), ("name", "string"), ("source-system", "uri"), ("target-system", "uri")]),
        ("Questionnaire", None, [("url", "uri"), ("name", "string"), ("title", "string")]),
    ):
        declared = next(r for r in rest_resources if r["type"] == resource_type)
        declared["interaction"] = [{"code": "read"}, {"code": "search-type"}]
        for element in ("versioning", "readHistory", "updateCreate", "conditionalCreate", "conditionalUpdate", "conditionalDelete",
                        "searchInclude", "searchRevInclude"):
            declared.pop(element, None)
        if search is not None:
            declared["searchParam"] = [{"name": name, "type": kind} for name, kind in search]
        declared.pop("operation", None)
        if operation is not None:
            declared["operation"] = [{"name": operation, "definition": f"http://hl7.org/fhir/OperationDefinition/{resource_type}-{operation}"}]


def capability_statement(base: str) -> dict[str, Any]:
    statement = deepcopy(_statement())
    statement["implementation"]["url"] = base
    statement["rest"][0]["security"] = {
        "cors": bool(get_settings().cors_origins),
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": f"{base}/auth/token"}],
        }],
        "description": "SMART Backend Services (client_credentials + private_key_jwt, RS384/ES384); see .well-known/smart-configuration",
    }
    return statement

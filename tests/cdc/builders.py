"""Builders for the CDC's tests: institutions with a district, diagnoses, enrolments in disease management."""

from typing import Any

from app.cdc.registries import DIVISION_URL, PROGRAMME_SYSTEM
from app.mpi.id_number import check_character

ICD_10 = "http://hl7.org/fhir/sid/icd-10"


def id_card(region: str, birth: str, sequence: str) -> str:
    """A valid GB 11643 number: region (6), birth date YYYYMMDD, sequence (3; odd for men)."""
    body = region + birth + sequence
    return body + check_character(body)


def organization(org_id: str, name: str, district: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Organization", "id": org_id, "name": name, "active": True}
    if district:
        resource["address"] = [{"district": name, "extension": [{"url": DIVISION_URL, "valueCode": district + "001000"}]}]
    return resource


def condition(patient_id: str, code: str = "I10", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition", "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": ICD_10, "code": code}]},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
    }
    resource.update(extra)
    return resource


def enrolment(patient_id: str, org_id: str, start: str, programme: str = "hypertension", *, end: str | None = None,
              status: str = "active") -> dict[str, Any]:
    period = {"start": start, **({"end": end} if end else {})}
    return {
        "resourceType": "EpisodeOfCare", "status": status, "patient": {"reference": f"Patient/{patient_id}"},
        "type": [{"coding": [{"system": PROGRAMME_SYSTEM, "code": programme}]}],
        "managingOrganization": {"reference": f"Organization/{org_id}"}, "period": period,
    }

"""Builders for the CDC's tests: institutions with a district, diagnoses, enrolments in disease management and
public-health follow-ups."""

from typing import Any

from app.cdc.followups import FOLLOWUP_SYSTEM
from app.cdc.registries import DIVISION_URL, PROGRAMME_SYSTEM
from app.mpi.id_number import check_character
from tests.builders import blood_pressure

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


def followup(patient_id: str, day: str, programme: str = "hypertension", *, mode: str = "AMB",
             bp: tuple[float, float] | None = None, glucose: tuple[float, str] | None = None) -> dict[str, Any]:
    """A public-health follow-up as a transaction: the Encounter (class AMB 门诊, HH 家庭, VR 电话) and its reading."""
    when = f"{day}T09:00:00+08:00"
    encounter = {
        "resourceType": "Encounter", "status": "finished", "subject": {"reference": f"Patient/{patient_id}"},
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": mode},
        "type": [{"coding": [{"system": FOLLOWUP_SYSTEM, "code": f"{programme}-followup"}]}],
        "period": {"start": when, "end": when},
    }
    entries = [{"fullUrl": "urn:uuid:0b6c1a52-8f0e-4d7c-9a37-2f1f2c3d4e01", "resource": encounter,
                "request": {"method": "POST", "url": "Encounter"}}]
    if bp is not None:
        reading = blood_pressure(f"Patient/{patient_id}", bp[0], bp[1], when)
        entries.append({"resource": reading | {"encounter": {"reference": entries[0]["fullUrl"]}},
                        "request": {"method": "POST", "url": "Observation"}})
    if glucose is not None:
        reading = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient_id}"},
                   "code": {"coding": [{"system": "http://loinc.org", "code": "14771-0"}]}, "effectiveDateTime": when,
                   "valueQuantity": {"value": glucose[0], "unit": glucose[1], "system": "http://unitsofmeasure.org", "code": glucose[1]},
                   "encounter": {"reference": entries[0]["fullUrl"]}}
        entries.append({"resource": reading, "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

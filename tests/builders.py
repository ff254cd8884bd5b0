"""Small builders for test resources."""

from typing import Any

ID_CARD = "urn:oid:2.16.156.10011.1.3"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(family: str = "张", given: str = "伟", *, id_card: str | None = None, birth_date: str = "1980-05-01", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "gender": "male",
        "birthDate": birth_date,
    }
    if id_card:
        resource["identifier"] = [{"system": ID_CARD, "value": id_card}]
    resource.update(extra)
    return resource


def blood_pressure(patient_ref: str, systolic: float = 150, diastolic: float = 95, when: str = "2026-03-01T09:30:00+08:00") -> dict[str, Any]:
    def component(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        }

    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": when,
        "component": [component("8480-6", systolic), component("8462-4", diastolic)],
    }


#: Personal values the tests send; none may ever appear in a log line (tests/conftest.py scans them all).
NAMES = ("张伟", "欧阳翠花", "李秀英")
ID_NUMBERS = ("11010519491231002X", "110105194912310021", "440524188001010014")
PHONES = ("13800138000", "13912345678")
PERSONAL_VALUES = (*NAMES, *ID_NUMBERS, *PHONES)

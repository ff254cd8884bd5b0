"""Pure: the facts the access policy needs from a resource (whose it is about, who cares for that resident, whom
the resident's Consent denies), read from the data in policy.yaml."""

from functools import cache
from pathlib import Path
from typing import Any

import yaml

POLICY_FILE = Path(__file__).with_name("policy.yaml")
CONSENT_ACTIVE = "active"


@cache
def policy_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    return data


def reference_id(value: Any, resource_type: str) -> str | None:
    """The id in a Reference to `resource_type` (relative or absolute), or None."""
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return None
    parts = value["reference"].split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return str(parts[-1])
    return None


def _references(content: dict[str, Any], element: str, resource_type: str) -> list[str]:
    value = content.get(element)
    items = value if isinstance(value, list) else [value]
    return [i for i in (reference_id(item, resource_type) for item in items) if i]


def patient_of(content: dict[str, Any]) -> str | None:
    """The resident a resource is about: itself for a Patient, else the first Patient reference."""
    if content.get("resourceType") == "Patient":
        return str(content.get("id")) if content.get("id") else None
    for element in policy_data()["patient_elements"]:
        found = _references(content, element, "Patient")
        if found:
            return found[0]
    return None


def care_rows(content: dict[str, Any]) -> list[dict[str, Any]]:
    """(patient_id, org_id) pairs this resource makes a care relation of."""
    rule = policy_data()["care_relations"].get(content.get("resourceType"))
    if not rule:
        return []
    if "while_status" in rule and content.get("status") not in rule["while_status"]:
        return []
    patients = _references(content, rule["patient"], "Patient")
    organizations = {org for element in rule["organizations"] for org in _references(content, element, "Organization")}
    return [{"patient_id": p, "org_id": o} for p in patients[:1] for o in sorted(organizations)]


def consent_rows(content: dict[str, Any]) -> list[dict[str, Any]]:
    """(patient_id, org_id) pairs an active denying Consent forbids; org_id "*" denies every other organization."""
    if content.get("resourceType") != "Consent" or content.get("status") != CONSENT_ACTIVE:
        return []
    provision = content.get("provision") or {}
    patients = _references(content, "patient", "Patient")
    if provision.get("type") != "deny" or not patients:
        return []
    actors = [reference_id(actor.get("reference"), "Organization") for actor in provision.get("actor") or [] if isinstance(actor, dict)]
    organizations = sorted({a for a in actors if a}) or ["*"]
    return [{"patient_id": patients[0], "org_id": org} for org in organizations]

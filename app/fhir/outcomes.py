"""OperationOutcome builders."""

from typing import Any

from app.errors import Issue, QiaoError


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue.to_fhir() for issue in issues]}


def from_error(error: QiaoError) -> dict[str, Any]:
    return operation_outcome(error.issues)


def information(message: str) -> dict[str, Any]:
    return operation_outcome([Issue("information", "informational", message)])

"""Errors that know their OperationOutcome.

QiaoError
├── InvalidRequest (400)          malformed input, unknown search parameter, bad Bundle
│   └── InvalidResource (400)     fhir.resources validation failed
├── Unauthorized (401)            no bearer token, or a bad one
├── Forbidden (403)               the token's scopes or the access policy forbid it
├── NotFound (404)                unknown type, id or version
├── Conflict (409)                id mismatch, concurrent change
├── Gone (410)                    deleted
├── PreconditionFailed (412)      stale If-Match, several conditional matches
├── Unprocessable (422)           valid FHIR that breaks a business rule (a referral without a reason)
├── PayloadTooLarge (413)
├── TooManyRequests (429)         polled too often, too many exports at once (Retry-After)
└── UnsupportedMediaType (415)
"""

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Issue:
    severity: str
    code: str
    diagnostics: str
    expression: list[str] = field(default_factory=list)

    def to_fhir(self) -> dict[str, object]:
        issue: dict[str, object] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = self.expression
        return issue


class QiaoError(Exception):
    status: int = 500
    code: str = "exception"
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, expression: Sequence[str] = (), issues: Sequence[Issue] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.issues = list(issues) or [Issue("error", self.code, message, list(expression))]


class InvalidRequest(QiaoError):
    status, code = 400, "invalid"


class InvalidResource(InvalidRequest):
    code = "structure"


class Unauthorized(QiaoError):
    status, code = 401, "login"
    headers = {"WWW-Authenticate": 'Bearer realm="qiao"'}


class Forbidden(QiaoError):
    status, code = 403, "forbidden"


class NotFound(QiaoError):
    status, code = 404, "not-found"


class Conflict(QiaoError):
    status, code = 409, "conflict"


class Gone(QiaoError):
    status, code = 410, "deleted"


class PreconditionFailed(QiaoError):
    status, code = 412, "conflict"


class Unprocessable(QiaoError):
    status, code = 422, "business-rule"


class PayloadTooLarge(QiaoError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(QiaoError):
    status, code = 415, "not-supported"



class TooManyRequests(QiaoError):
    status, code = 429, "throttled"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}

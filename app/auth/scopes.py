"""SMART scopes (App Launch 2.x, `scopes-and-launch-context`): `system/Patient.rs`, `system/*.cruds`, and the v1
forms `system/Patient.read`, `.write`, `.*`. Only `system/` scopes mean anything to a backend service."""

import re
from dataclasses import dataclass

from app.errors import InvalidRequest

INTERACTIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]{1,63})\.(\*|read|write|[cruds]{1,5})(\?.*)?$")


@dataclass(frozen=True)
class Scopes:
    """The granted permissions: resource type (or `*`) → the interactions allowed on it."""

    grants: tuple[tuple[str, str], ...]

    def allows(self, resource_type: str, interaction: str) -> bool:
        return any(t in ("*", resource_type) and interaction in i for t, i in self.grants)

    def allows_explicitly(self, resource_type: str, interaction: str) -> bool:
        """Granted by naming the type itself, not by `*` (the audit trail is read only with its own scope)."""
        return any(t == resource_type and interaction in i for t, i in self.grants)

    def types_allowed(self, interaction: str) -> set[str] | None:
        """The types on which `interaction` is allowed; None when every type is."""
        if any(t == "*" and interaction in i for t, i in self.grants):
            return None
        return {t for t, i in self.grants if interaction in i}

    def __str__(self) -> str:
        return " ".join(f"system/{t}.{i}" for t, i in self.grants)


def parse(scope: str) -> Scopes:
    """Parse a space-separated scope string; anything not a `system/` resource scope is refused."""
    grants: list[tuple[str, str]] = []
    for word in scope.split():
        match = _SCOPE.match(word)
        if not match:
            raise InvalidRequest(f"unsupported scope {word!r}: use system/<Type|*>.<cruds> (SMART v2) or .read/.write", expression=["scope"])
        if match.group(3):
            raise InvalidRequest(f"search-constrained scopes are not supported: {word!r}", expression=["scope"])
        resource_type, permissions = match.group(1), match.group(2)
        permissions = _V1.get(permissions, permissions)
        if list(permissions) != sorted(set(permissions), key=INTERACTIONS.index):
            raise InvalidRequest(f"scope {word!r}: permissions must appear once each, in the order c r u d s", expression=["scope"])
        grants.append((resource_type, permissions))
    return Scopes(tuple(grants))


def granted(requested: Scopes, allowed: Scopes) -> Scopes:
    """What a client gets: each requested grant narrowed to its registration (`*` narrows to the allowed types)."""
    result: dict[str, str] = {}
    for resource_type, permissions in requested.grants:
        for p in permissions:
            if resource_type != "*":
                targets = [resource_type] if allowed.allows(resource_type, p) else []
            else:
                types = allowed.types_allowed(p)
                targets = ["*"] if types is None else sorted(types)
            for target in targets:
                result[target] = "".join(sorted(set(result.get(target, "") + p), key=INTERACTIONS.index))
    return Scopes(tuple(result.items()))

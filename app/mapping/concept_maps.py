"""The code tables published as FHIR ConceptMaps, and `$translate` over them. The tables stay the one truth (the
engine reads them, a steward reviews them as files); a ConceptMap is how other systems read the same data, so they
are read and searched here, never written."""

from dataclasses import dataclass
from typing import Any

from app.errors import Forbidden, InvalidRequest, NotFound
from app.mapping.codes import CodeTable, tables
from app.store.rules import WriteRule

URL_PREFIX = "urn:qiao:conceptmap:"


@dataclass(frozen=True)
class Target:
    system: str
    code: str
    display: str | None

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, **({"display": self.display} if self.display else {})}


def map_id(table: CodeTable) -> str:
    """A FHIR id (no underscores) for the table."""
    return table.name.replace("_", "-")


def map_url(table: CodeTable) -> str:
    return URL_PREFIX + map_id(table)


def targets(table: CodeTable, value: Any) -> list[Target]:
    """What one entry maps to: a code of the table's target system, a boolean (Patient.active), a Coding, a
    CodeableConcept (several codings), or a LOINC entry with its unit."""
    if isinstance(value, bool):
        return [Target(table.target_system, "true" if value else "false", None)]
    if isinstance(value, str):
        return [Target(table.target_system, value, None)]
    codings = value.get("coding") if isinstance(value.get("coding"), list) else [value]
    return [Target(c.get("system") or table.target_system, str(c["code"]), c.get("display")) for c in codings if "code" in c]


def concept_map(table: CodeTable) -> dict[str, Any]:
    """One ConceptMap per table, one group per target system, every local code (number or word) an element."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for code, value in table.entries.items():
        by_system: dict[str, list[dict[str, Any]]] = {}
        for target in targets(table, value):
            coding = target.coding()
            by_system.setdefault(coding.pop("system"), []).append({**coding, "equivalence": "equivalent"})
        for system, mapped in by_system.items():
            groups.setdefault(system, []).append({"code": code, "target": mapped})
    return {
        "resourceType": "ConceptMap", "id": map_id(table), "url": map_url(table), "name": table.name,
        "title": table.description, "status": "active", "publisher": "Qiao (mappings/codes)",
        "group": [{"source": table.source_system, "target": system, "element": elements} for system, elements in groups.items()],
    }


def find(map_or_url: str) -> CodeTable:
    """The table a ConceptMap id or canonical URL names."""
    wanted = map_or_url.removeprefix(URL_PREFIX).split("|")[0]
    for table in tables().values():
        if map_id(table) == wanted:
            return table
    raise NotFound(f"no ConceptMap {map_or_url!r}; the code tables are {', '.join(sorted(map_id(t) for t in tables().values()))}",
                   expression=["url"])


def search(params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """ConceptMaps by url, name, source-system or target-system (all given must hold)."""
    supported = {"url", "name", "source-system", "target-system", "_count", "_format"}
    unknown = sorted({name for name, _ in params} - supported)
    if unknown:
        raise InvalidRequest(f"ConceptMap search supports {', '.join(sorted(supported - {'_format'}))}, not {', '.join(unknown)}",
                             expression=unknown)
    found = [concept_map(t) for t in tables().values()]
    for name, value in params:
        if name == "url":
            found = [m for m in found if m["url"] == value]
        elif name == "name":
            found = [m for m in found if m["name"].lower().startswith(value.lower())]
        elif name in ("source-system", "target-system"):
            side = "source" if name == "source-system" else "target"
            found = [m for m in found if any(g[side] == value for g in m["group"])]
    return found


def translate(params: list[tuple[str, str]], map_id_in_path: str | None = None) -> dict[str, Any]:
    """$translate (R4): `code` and `system` (or, with `reverse=true`, a target code and its system) through one map
    (`url`, or the map in the path) or through every map whose source system is `system`; `targetsystem` narrows the
    matches. Parameters `result`, `message`, and a `match` (equivalence, concept, source) per target."""
    given = dict(params)
    for unsupported in ("coding", "codeableConcept", "dependency", "conceptMap"):
        if unsupported in given:
            raise InvalidRequest(f"$translate here takes code and system, not {unsupported}", expression=[unsupported])
    code, system = given.get("code"), given.get("system")
    reverse = given.get("reverse", "false") == "true"
    if not code:
        raise InvalidRequest("$translate needs a code (with its system)", expression=["code"])
    chosen = map_id_in_path or given.get("url")
    if chosen is None and not system:
        raise InvalidRequest("$translate needs the code's system, or the ConceptMap (url)", expression=["system"])
    candidates = [find(chosen)] if chosen else list(tables().values())
    wanted = given.get("targetsystem")
    matches = []
    for table in candidates:
        if not reverse:  # the engine's own lookup
            value = table.translate(code) if system in (None, table.source_system) else None
            found = targets(table, value) if value is not None else []
            matches += [_match(t.coding(), table) for t in found if wanted in (None, t.system)]
            continue
        for local, value in table.entries.items():
            if any(t.code == code.strip() and system in (None, t.system) and wanted in (None, t.system) for t in targets(table, value)):
                matches.append(_match({"system": table.source_system, "code": local}, table))
    parameters: list[dict[str, Any]] = [{"name": "result", "valueBoolean": bool(matches)}]
    if not matches:
        parameters.append({"name": "message", "valueString": f"no mapping of {system or ''}|{code} in {chosen or 'any code table'}"})
    return {"resourceType": "Parameters", "parameter": parameters + matches}


def _match(concept: dict[str, str], table: CodeTable) -> dict[str, Any]:
    return {"name": "match", "part": [{"name": "equivalence", "valueCode": "equivalent"},
                                      {"name": "concept", "valueCoding": concept}, {"name": "source", "valueUri": map_url(table)}]}


def _refuse(*_: Any) -> None:
    raise Forbidden("ConceptMaps are Qiao's code tables (mappings/codes): change the table file, not the resource",
                    expression=["ConceptMap"])


RULE = WriteRule(frozenset({"ConceptMap"}), check=_refuse)

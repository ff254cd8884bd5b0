"""Code tables (mappings/codes/*.yaml): a source's local codes → standard codes (GB/T 2261.1, ICD-10, LOINC …).

Each table is data a steward can review, and is published as a FHIR ConceptMap (`concept_map`), so that
`ConceptMap/$translate` answers from the same table the mappings use.
"""

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from app.config import get_settings


@dataclass(frozen=True)
class CodeTable:
    name: str
    description: str
    source_system: str
    target_system: str
    entries: dict[str, Any]  # local code → target code (a string) or an object (e.g. a LOINC coding with its unit)

    def translate(self, code: str) -> Any | None:
        return self.entries.get(code.strip())


@cache
def tables(directory: Path | None = None) -> dict[str, CodeTable]:
    folder = directory or get_settings().mappings_dir / "codes"
    found: dict[str, CodeTable] = {}
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        found[data["name"]] = CodeTable(data["name"], data.get("description", ""), data.get("source_system", ""),
                                        data.get("target_system", ""), {str(k): v for k, v in data["map"].items()})
    return found


def concept_map(table: CodeTable) -> dict[str, Any]:
    """The table as a FHIR R4 ConceptMap (one group, equivalence `equivalent`)."""
    elements = []
    for code, target in table.entries.items():
        target_code = target["code"] if isinstance(target, dict) else str(target)
        mapped: dict[str, Any] = {"code": target_code, "equivalence": "equivalent"}
        if isinstance(target, dict) and target.get("display"):
            mapped["display"] = target["display"]
        elements.append({"code": code, "target": [mapped]})
    return {
        "resourceType": "ConceptMap", "id": table.name.replace("_", "-"), "url": f"urn:qiao:conceptmap:{table.name}",
        "name": table.name, "status": "active", "description": table.description or table.name,
        "group": [{"source": table.source_system, "target": table.target_system, "element": elements}],
    }

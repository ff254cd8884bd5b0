"""Code tables (mappings/codes/*.yaml): a source's local codes → standard codes (GB/T 2261.1, ICD-10, LOINC …).

Each table is data a steward can review; other systems read the same tables as FHIR ConceptMaps (concept_maps.py).
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

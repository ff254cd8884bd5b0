"""The configured source systems (QIAO_SOURCES_FILE, default mappings/sources.yaml)."""

from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from app.config import get_settings


@dataclass(frozen=True)
class Source:
    name: str
    organization: str
    facility: str | None
    charset: str | None
    attributes: tuple[tuple[str, Any], ...]  # everything else the file says (identifier systems …)
    files: tuple[tuple[str, str], ...] = ()  # (file name pattern, export kind), first match wins

    def kind_of(self, file_name: str) -> str | None:
        """Which kind of export a file is, by its name."""
        return next((kind for pattern, kind in self.files if fnmatch(file_name, pattern)), None)

    def mapping_attributes(self) -> dict[str, Any]:
        """What `{source: …}` in a mapping can read."""
        return {**dict(self.attributes), "name": self.name, "organization": self.organization,
                "organization_reference": {"reference": f"Organization/{self.organization}"}}


@cache
def sources(path: Path | None = None) -> dict[str, Source]:
    data = yaml.safe_load((path or get_settings().sources_file).read_text(encoding="utf-8")) or {}
    found = {}
    for item in data.get("sources", []):
        own = ("name", "organization", "facility", "charset", "files")
        extra = tuple(sorted((k, v) for k, v in item.items() if k not in own))
        found[item["name"]] = Source(item["name"], item["organization"], item.get("facility"), item.get("charset"), extra,
                                     tuple((item.get("files") or {}).items()))
    return found


def by_facility(facility: str | None) -> Source | None:
    """The source that names itself `facility` in MSH-4."""
    return next((s for s in sources().values() if facility and s.facility == facility), None)

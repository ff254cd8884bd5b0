"""Golden files per mapping: each case's input, through its adapter and the mapping engine, gives exactly the
resources in `<case>.expected.json`, and those resources keep the invariants every mapping output must keep.

Cases live in tests/mappings/cases/<adapter>/<mapping>/ (the mapping file's name): the input as the source sends it
(an HL7 v2 message, a CSV header and row, a JSON object) beside `<case>.expected.json`. After a deliberate change of
output, rewrite the expected files with `QIAO_GOLDEN_UPDATE=1 .venv/bin/python -m pytest tests/mappings`, read the
diff, and bump the mapping's `version`.
"""

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.base import SourceRecord
from adapters.hl7v2 import parse as hl7v2
from adapters.rows import parse as rows
from app.fhir import resources
from app.ingest.sources import Source, sources
from app.mapping import engine

CASES = Path(__file__).parent / "cases"
INPUTS = sorted(p for p in CASES.glob("*/*/*") if not p.name.endswith(".expected.json"))
HOSPITAL = "dongcheng-hospital"  # the source of the HL7 v2 cases


def _source_and_record(case: Path) -> tuple[Source, SourceRecord, engine.Mapping]:
    adapter, mapping_name = case.parent.parent.name, case.parent.name
    if adapter == "hl7v2":
        source = sources()[HOSPITAL]
        record = hl7v2.parse(case.read_bytes(), default_charset=source.charset)
        return source, record, engine.find(adapter, record.kind)
    mapping = next(m for (a, _), m in engine.mappings().items() if a == adapter and m.name == f"{adapter}/{mapping_name}")
    source = next(s for s in sources().values() if any(kind in mapping.kinds for _, kind in s.files))
    return source, rows.parse(case.read_bytes(), kind=mapping.kinds[0], default_charset=source.charset), mapping


def produced(case: Path) -> list[dict[str, Any]]:
    source, record, mapping = _source_and_record(case)
    assert mapping.name == f"{case.parent.parent.name}/{case.parent.name}", "the case is in its mapping's folder"
    return [{"key": p.key, **({"create_only": True} if p.create_only else {}), **({"amend": True} if p.amend else {}),
             "resource": p.content} for p in engine.apply(mapping, record, source.mapping_attributes())]


@pytest.mark.parametrize("case", INPUTS, ids=lambda p: str(p.relative_to(CASES)))
def test_the_case_gives_its_expected_resources(case: Path) -> None:
    actual = produced(case)
    expected_file = case.with_name(case.stem + ".expected.json")
    if os.environ.get("QIAO_GOLDEN_UPDATE"):
        expected_file.write_bytes(orjson.dumps(actual, option=orjson.OPT_INDENT_2) + b"\n")
    assert expected_file.exists(), f"{expected_file.name} is missing: write it with QIAO_GOLDEN_UPDATE=1 and read it"
    assert actual == orjson.loads(expected_file.read_bytes())


@pytest.mark.parametrize("case", INPUTS, ids=lambda p: str(p.relative_to(CASES)))
def test_what_a_mapping_makes_is_valid_fhir_without_empty_elements(case: Path) -> None:
    made = produced(case)
    identities = [(m["resource"]["resourceType"], m["resource"]["id"]) for m in made]
    # one resource, one place; except that one may be made if absent (create_only) and amended if present: only one
    # of the two is ever written (a follow-up form's resident, who may have died)
    written = [i for i, m in zip(identities, made, strict=True) if not m.get("amend")]
    assert len(written) == len(set(written)), "one resource, one place in the output"
    amended = [i for i, m in zip(identities, made, strict=True) if m.get("amend")]
    assert len(amended) == len(set(amended)), "one resource, one amendment"
    for item in made:
        if not item.get("amend"):  # an amendment is a part of a resource that exists
            resources.validate(item["resource"])
        assert not _empty(item["resource"]), f"{item['key']} holds an empty element: {_empty(item['resource'])}"
    local = {f"{t}/{i}" for t, i in identities}
    for reference in _references([m["resource"] for m in made]):
        kind = reference.split("/")[0]
        if kind in {t for t, _ in identities}:
            assert reference in local, f"{reference} names a resource of this mapping that it did not make"


def test_every_mapping_has_a_golden_case() -> None:
    covered = {f"{p.parent.parent.name}/{p.parent.name}" for p in INPUTS}
    assert {m.name for m in engine.mappings().values()} <= covered


def _empty(value: Any, path: str = "") -> str | None:
    """The first empty element (None, "", [] or {}) in a resource, by its path."""
    if value is None or value == "" or value == [] or value == {}:
        return path or "(root)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((found for key, item in items if (found := _empty(item, f"{path}.{key}"))), None)


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return own + [r for item in value.values() for r in _references(item)]
    if isinstance(value, list):
        return [r for item in value for r in _references(item)]
    return []

"""Query string → SearchRequest."""

import pytest

from app.errors import InvalidRequest
from app.fhir.search import parse


def test_values_modifiers_and_chains() -> None:
    request = parse("Observation", [("code", "a,b\\,c"), ("subject:Patient.identifier", "s|v"), ("_count", "5000")])
    code, chained = request.criteria
    assert code.values == ("a", "b,c")
    assert chained.chain is not None and chained.target_type == "Patient" and chained.chain.values == ("s|v",)
    assert request.count == 1000  # capped


def test_includes_sort_and_summary() -> None:
    request = parse("Task", [("_include", "Task:focus"), ("_revinclude", "*:subject"), ("_sort", "-authored-on,_id"), ("_summary", "count")])
    assert request.includes[0].parameter == "focus"
    assert request.revincludes[0].source_type == "*"
    assert request.sort == [("authored-on", True), ("_id", False)]
    assert request.summary == "count"


@pytest.mark.parametrize(
    ("params", "expression"),
    [
        ([("nickname", "x")], "nickname"),
        ([("name:fuzzy", "x")], "name:fuzzy"),
        ([("_count", "many")], "_count"),
        ([("birthdate", "not-a-date")], "birthdate"),
        ([("_include", "Observation:patient")], "_include"),
        ([("gender.name", "x")], "gender.name"),
    ],
)
def test_errors_name_the_parameter(params: list[tuple[str, str]], expression: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse("Patient", params)
    assert raised.value.issues[0].expression == [expression]


def test_lenient_ignores_unknown_parameters() -> None:
    request = parse("Patient", [("nickname", "x"), ("gender", "male")], lenient=True)
    assert request.ignored == ["nickname"]
    assert request.applied == [("gender", "male")]


def test_code_systems_are_inlined_only_when_plainly_safe() -> None:
    from app.store.query import Sql

    sql = Sql()
    assert sql.constant("urn:oid:2.16.156.10011.1.3") == "'urn:oid:2.16.156.10011.1.3'"
    assert sql.constant("http://loinc.org") == "'http://loinc.org'"
    assert sql.constant("x' OR '1'='1") == ":p0"
    assert sql.params == {"p0": "x' OR '1'='1"}


def test_parameters_with_empty_values_are_ignored() -> None:
    request = parse("Observation", [("code", ""), ("subject:Patient.identifier", ""), ("status", ",")])
    assert request.criteria == []


def test_lenient_still_rejects_bad_values_of_known_parameters() -> None:
    with pytest.raises(InvalidRequest):
        parse("Patient", [("birthdate", "yesterday")], lenient=True)
    assert parse("Patient", [("name:fuzzy", "x")], lenient=True).ignored == ["name:fuzzy"]

"""The national forms published as FHIR Questionnaires, derived from the mappings that fill them.

A mapping that makes a QuestionnaireResponse names its form (`questionnaire: urn:qiao:questionnaire:…`) and writes
each item as a template: linkId and text constants, and an answer whose `value[x]` says the item's type (a code
table lookup is a choice among the codes the table maps to; `each` makes it repeat). That template is the one truth about the
form, so the Questionnaire is read from it: a form that gains an item in its mapping gains it here too. Read and
searched, never written (change the mapping)."""

from typing import Any

from app.errors import Forbidden, InvalidRequest, NotFound
from app.mapping import concept_maps, engine
from app.mapping.codes import tables
from app.store.rules import WriteRule

URL_PREFIX = "urn:qiao:questionnaire:"
#: value[x] of an answer → Questionnaire.item.type
_TYPES = {"valueString": "string", "valueDecimal": "decimal", "valueInteger": "integer", "valueDate": "date",
          "valueDateTime": "dateTime", "valueBoolean": "boolean", "valueCoding": "choice", "valueQuantity": "quantity"}


def questionnaires() -> list[dict[str, Any]]:
    """One Questionnaire per form some mapping fills, in the order of the mappings."""
    found: dict[str, dict[str, Any]] = {}
    for mapping in {m.name: m for m in engine.mappings().values()}.values():
        for spec in mapping.resources:
            url = (spec.get("fixed") or {}).get("questionnaire")
            if spec["type"] == "QuestionnaireResponse" and isinstance(url, str) and url.startswith(URL_PREFIX):
                found.setdefault(url, questionnaire(url, mapping, spec))
    return list(found.values())


def questionnaire(url: str, mapping: engine.Mapping, spec: dict[str, Any]) -> dict[str, Any]:
    name = url.removeprefix(URL_PREFIX)
    return {
        "resourceType": "Questionnaire", "id": name, "url": url, "version": mapping.version, "name": name.replace("-", "_"),
        "title": mapping.title or mapping.name, "status": "active", "publisher": f"Qiao (mappings/{mapping.name}.yaml)",
        "subjectType": ["Patient"], "item": _items(spec["content"].get("item") or []),
    }


def _items(templates: list[Any]) -> list[dict[str, Any]]:
    return [_item(t) for t in templates if isinstance(t, dict) and "linkId" in t]


def _item(template: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"linkId": _constant(template["linkId"]), "text": _constant(template.get("text"))}
    nested = template.get("item")
    if nested is not None:  # a group: {each: medications, as: {…}} repeats its one child, or a list of children
        repeated = isinstance(nested, dict) and "each" in nested
        children = [nested["as"]] if repeated else nested if isinstance(nested, list) else [nested]
        return {**item, "type": "group", **({"repeats": True} if repeated else {}), "item": _items(children)}
    answer = template.get("answer")
    repeats = isinstance(answer, dict) and "each" in answer
    value: dict[str, Any] = {}
    if isinstance(answer, dict) and repeats:
        value = answer["as"]
    elif isinstance(answer, list) and answer:
        value = answer[0]
    kind = next((k for k in value if k in _TYPES), None)
    if kind is None:
        raise ValueError(f"item {item['linkId']}: its answer names no value[x] this module knows")
    item["type"] = _TYPES[kind]
    if repeats:
        item["repeats"] = True
    if kind == "valueCoding" and isinstance(value[kind], dict) and "code" in value[kind]:
        table = tables()[value[kind]["code"]]
        item["answerOption"] = [{"valueCoding": coding} for coding in _distinct_codings(table)]
    return item


def _distinct_codings(table: Any) -> list[dict[str, str]]:
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for value in table.entries.values():
        for target in concept_maps.targets(table, value):
            seen.setdefault((target.system, target.code), target.coding())
    return list(seen.values())


def _constant(value: Any) -> Any:
    return value["const"] if isinstance(value, dict) and "const" in value else value


def find(questionnaire_id: str) -> dict[str, Any]:
    wanted = questionnaire_id.removeprefix(URL_PREFIX).split("|")[0]
    for found in questionnaires():
        if found["id"] == wanted:
            return found
    raise NotFound(f"no Questionnaire {questionnaire_id!r}; the forms are {', '.join(q['id'] for q in questionnaires())}",
                   expression=["id"])


def search(params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Questionnaires by url, name or title (all given must hold)."""
    supported = {"url", "name", "title", "_count", "_format"}
    unknown = sorted({name for name, _ in params} - supported)
    if unknown:
        raise InvalidRequest(f"Questionnaire search supports url, name and title, not {', '.join(unknown)}", expression=unknown)
    found = questionnaires()
    for name, value in params:
        if name == "url":
            found = [q for q in found if q["url"] == value.split("|")[0]]
        elif name in ("name", "title"):
            found = [q for q in found if value.lower() in q[name].lower()]
    return found


def _refuse(*_: Any) -> None:
    raise Forbidden("Questionnaires are the forms Qiao's mappings fill (mappings/): change the mapping, not the resource",
                    expression=["Questionnaire"])


RULE = WriteRule(frozenset({"Questionnaire"}), check=_refuse)

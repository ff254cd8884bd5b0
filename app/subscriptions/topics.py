"""The subscription topics Qiao raises (CONVENTIONS: Referrals), and the filters a Subscription narrows them with.

A filter is a search (`Task?owner=Organization/hosp-1&status=requested`) evaluated against the changed resource
in memory, through the same index rows the store writes, so that it means what the same search would find.
Token, reference and string parameters are supported; a Subscription asking for others is refused when created.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from app.cdc import registries
from app.config import get_settings
from app.errors import Unprocessable
from app.referrals import escalations, stages
from app.store.indexing import index_rows, normalise
from app.store.search_parameters import parameters_for

REFERRAL = "urn:qiao:topic:referral"
REGISTRY = "urn:qiao:topic:registry"
ESCALATION = "urn:qiao:topic:escalation"
REFERRAL_CATEGORY_CODE = "3457005"  # SNOMED CT: patient referral
FILTERABLE = ("token", "reference", "string")

#: one filter: a resource type and its ANDed parameters, each with ORed values
Filter = tuple[str, list[tuple[str, list[str]]]]


@dataclass(frozen=True)
class Topic:
    url: str
    description: str
    types: frozenset[str]
    triggers: Callable[[dict[str, Any]], bool]


def _is_referral_traffic(content: dict[str, Any]) -> bool:
    """Referral Tasks and ServiceRequests, and the follow-up Tasks they open."""
    if content["resourceType"] == "Task":
        return stages.is_referral(content) or stages.is_follow_up(content)
    return any(c.get("code") == REFERRAL_CATEGORY_CODE or c.get("system") == "urn:qiao:referral-direction"
               for category in content.get("category") or [] for c in category.get("coding") or [])


TOPICS = {
    REFERRAL: Topic(REFERRAL, "Referral Tasks and ServiceRequests (and the follow-up Tasks they open): created or changed",
                    frozenset({"Task", "ServiceRequest"}), _is_referral_traffic),
    REGISTRY: Topic(REGISTRY, "Registry entries (EpisodeOfCare of type urn:qiao:registry): a resident joined or left a "
                    "chronic-disease registry, or their managing organization or district changed",
                    frozenset({"EpisodeOfCare"}), registries.is_entry),
    ESCALATION: Topic(ESCALATION, "Escalations (Task of code urn:qiao:task-code|escalation): a referral or its follow-up "
                      "missed a service level (not received, not accepted, follow-up overdue), or such a miss was resolved",
                      frozenset({"Task"}), escalations.is_escalation),
}


def topic(url: str) -> Topic:
    found = TOPICS.get(url)
    if found is None:
        raise Unprocessable(f"Subscription.criteria {url!r} is not a topic of this server (known: {', '.join(TOPICS)})",
                            expression=["Subscription.criteria"])
    return found


def parse_filter(chosen: Topic, text: str) -> Filter:
    """`Type?param=value[,value]&…` (Type may be left out when the topic has one type)."""
    resource_type, _, query = text.partition("?") if "?" in text else ("", "", text)
    if not resource_type and len(chosen.types) == 1:
        resource_type = next(iter(chosen.types))
    where = ["Subscription.criteria.extension"]
    if resource_type not in chosen.types:
        raise Unprocessable(f"filter {text!r}: the topic covers {', '.join(sorted(chosen.types))}, not {resource_type or '(no type)'}",
                            expression=where)
    known = parameters_for(resource_type)
    parameters: list[tuple[str, list[str]]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        parameter = known.get(name)
        if parameter is None or parameter.type not in FILTERABLE:
            usable = sorted(n for n, p in known.items() if p.type in FILTERABLE)
            raise Unprocessable(f"filter {text!r}: {name!r} is not a token, reference or string parameter of {resource_type}"
                                f" (usable: {', '.join(usable)})", expression=where)
        if not value:
            raise Unprocessable(f"filter {text!r}: {name} has no value", expression=where)
        parameters.append((name, value.split(",")))
    if not parameters:
        raise Unprocessable(f"filter {text!r} names no parameter", expression=where)
    return resource_type, parameters


def matches(filters: list[Filter], content: dict[str, Any], indexed: dict[int, Any] | None = None) -> bool:
    """Whether a changed resource passes a subscription's filters: all of them when none is given; else those of its
    type, ANDed (filters that name only other types of the topic leave this type out). `indexed` keeps the index
    rows made for a resource, for the next subscription's filters."""
    if not filters:
        return True
    own = [parameters for resource_type, parameters in filters if resource_type == content["resourceType"]]
    if not own:
        return False
    indexed = {} if indexed is None else indexed
    rows = indexed.get(id(content))
    if rows is None:
        settings = get_settings()
        rows = indexed[id(content)] = index_rows(content, zone=settings.zone, base_url=settings.base_url)
    known = parameters_for(content["resourceType"])
    return all(
        any(_matches_value(known[name].type, rows, name, value) for value in values)
        for parameters in own for name, values in parameters
    )


def _matches_value(kind: str, rows: dict[str, list[dict[str, Any]]], name: str, value: str) -> bool:
    mine = [row for row in rows[kind] if row["param"] == name]
    if kind == "token":
        system, bar, code = value.rpartition("|")
        return any(row["code"] == code and (not bar or row["system"] == system) for row in mine)
    if kind == "reference":
        target_type, _, target_id = value.rpartition("/")
        return any(row["target_id"] == target_id and (not target_type or row["target_type"] == target_type) for row in mine)
    wanted = normalise(value)
    return any(row["value_norm"].startswith(wanted) for row in mine)

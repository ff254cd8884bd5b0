"""SearchRequest criteria → SQL conditions over the search index, plus sort keys and keyset cursors."""

import base64
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import ColumnElement, FromClause, and_, exists, false, func, literal, not_, or_, select, true

from app.errors import InvalidRequest
from app.fhir.search import Criterion, split_prefix
from app.store import dates
from app.store.indexing import normalise, parse_reference
from app.store.tables import INDEX_TABLES, resource, search_date, search_reference, search_string, search_token

STRING_SENTINEL_HIGH = "\U0010ffff"


def condition(
    row: FromClause, resource_type: str, criterion: Criterion, *, zone: ZoneInfo, base_url: str
) -> ColumnElement[bool]:
    """A condition on a `resource` row (or alias) of `resource_type` that holds when it matches the criterion."""
    if criterion.name == "_id":
        return row.c.res_id.in_(criterion.values)
    if criterion.name == "_lastUpdated":
        return or_(*(_last_updated(row, value, zone) for value in criterion.values))
    table = INDEX_TABLES[criterion.type]
    own_rows = and_(table.c.resource_pk == row.c.pk, table.c.param == criterion.name)
    if criterion.modifier == "missing":
        present = exists().where(own_rows)
        return not_(present) if criterion.values == ("true",) else present
    if criterion.chain is not None:
        return _chained(row, resource_type, criterion, zone=zone, base_url=base_url)
    matches = or_(*(_value_condition(criterion, value, zone, base_url) for value in criterion.values))
    if criterion.type == "reference" and criterion.target_type:
        matches = and_(matches, search_reference.c.target_type == criterion.target_type)
    found = row.c.pk.in_(
        select(table.c.resource_pk).where(table.c.res_type == resource_type, table.c.param == criterion.name, matches)
    )
    return not_(found) if criterion.modifier == "not" else found


def _value_condition(criterion: Criterion, value: str, zone: ZoneInfo, base_url: str) -> ColumnElement[bool]:
    if criterion.type == "token":
        return _token(value)
    if criterion.type == "string":
        return _string(value, criterion.modifier)
    if criterion.type == "date":
        prefix, raw = split_prefix(value)
        low, high = dates.date_range(raw, zone)
        return date_condition(prefix, low, high, search_date.c.low, search_date.c.high)
    return _reference(value, base_url)


def _token(value: str) -> ColumnElement[bool]:
    if "|" not in value:
        return search_token.c.code == value
    system, _, code = value.partition("|")
    if not code:
        return search_token.c.system == system
    return and_(search_token.c.code == code, search_token.c.system == system)


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string(value: str, modifier: str | None) -> ColumnElement[bool]:
    if modifier == "exact":
        return search_string.c.value_exact == value
    pattern = _escape_like(normalise(value))
    if modifier == "contains":
        return search_string.c.value_norm.like(f"%{pattern}%", escape="\\")
    return search_string.c.value_norm.like(f"{pattern}%", escape="\\")


def _reference(value: str, base_url: str) -> ColumnElement[bool]:
    target = parse_reference(value, base_url)
    if target is None:
        return search_reference.c.target_id == value
    target_type, target_id = target
    if not target_type:
        return search_reference.c.target_id == target_id
    return and_(search_reference.c.target_id == target_id, search_reference.c.target_type == target_type)


def _chained(
    row: FromClause, resource_type: str, criterion: Criterion, *, zone: ZoneInfo, base_url: str
) -> ColumnElement[bool]:
    assert criterion.chain is not None and criterion.target_type is not None
    target = resource.alias()
    target_ids = select(target.c.res_id).where(
        target.c.res_type == criterion.target_type,
        target.c.deleted == false(),
        condition(target, criterion.target_type, criterion.chain, zone=zone, base_url=base_url),
    )
    return row.c.pk.in_(
        select(search_reference.c.resource_pk).where(
            search_reference.c.res_type == resource_type,
            search_reference.c.param == criterion.name,
            search_reference.c.target_type == criterion.target_type,
            search_reference.c.target_id.in_(target_ids),
        )
    )


def date_condition(prefix: str, low: int, high: int, t_low: Any, t_high: Any) -> ColumnElement[bool]:
    """FHIR date prefixes over half-open ranges: search [low, high) against target [t_low, t_high)."""
    equal = and_(t_low >= low, t_high <= high)
    if prefix == "eq":
        return equal
    if prefix == "ne":
        return not_(equal)
    if prefix == "gt":
        return t_high > high
    if prefix == "lt":
        return t_low < low
    if prefix == "ge":
        return or_(t_high > high, equal)
    if prefix == "le":
        return or_(t_low < low, equal)
    if prefix == "sa":
        return t_low >= high
    if prefix == "eb":
        return t_high <= low
    # ap: the search range widened by 10% of its distance from now (at least a day), overlapping the target
    now = dates.micros(dates.now())
    slack = max(abs(now - low) // 10, 86_400_000_000)
    return and_(t_low < high + slack, t_high > low - slack)


def _last_updated(row: FromClause, value: str, zone: ZoneInfo) -> ColumnElement[bool]:
    prefix, raw = split_prefix(value)
    low, high = dates.date_range(raw, zone)
    as_time = dates.from_micros
    column = row.c.last_updated
    # the stored instant has millisecond precision: its range is [t, t + 1 ms)
    if prefix in ("gt", "sa"):
        return column >= as_time(high)
    if prefix in ("lt", "eb"):
        return column < as_time(low)
    if prefix == "ge":
        return column >= as_time(low)
    if prefix == "le":
        return column < as_time(high)
    inside = and_(column >= as_time(low), column < as_time(high))
    if prefix == "ne":
        return not_(inside)
    if prefix == "ap":
        slack = timedelta(microseconds=max(abs(dates.micros(dates.now()) - low) // 10, 86_400_000_000))
        return and_(column >= as_time(low) - slack, column < as_time(high) + slack)
    return inside


def sort_expression(row: FromClause, resource_type: str, name: str, descending: bool, kind: str) -> ColumnElement[Any]:
    """A total-order sort key: the lowest (or, descending, highest) indexed value; resources without one sort last."""
    if name == "_id":
        return row.c.res_id
    if name == "_lastUpdated":
        return row.c.last_updated
    table = INDEX_TABLES[kind]
    column = {"token": table.c.get("code"), "string": table.c.get("value_norm"), "date": table.c.get("low")}[kind]
    aggregate = func.max(column) if descending else func.min(column)
    value = (
        select(aggregate)
        .where(table.c.resource_pk == row.c.pk, table.c.param == name, table.c.res_type == resource_type)
        .scalar_subquery()
    )
    if kind == "date":
        missing = literal(dates.MIN_MICROS if descending else dates.MAX_MICROS)
    else:
        missing = literal("" if descending else STRING_SENTINEL_HIGH)
    return func.coalesce(value, missing)


def after_cursor(keys: list[tuple[ColumnElement[Any], bool]], values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in the order of `keys` (keyset paging)."""
    clauses = []
    for i, (key, descending) in enumerate(keys):
        equal_before = [k == v for (k, _), v in zip(keys[:i], values[:i], strict=True)]
        clauses.append(and_(*equal_before, key < values[i] if descending else key > values[i]))
    return or_(*clauses) if clauses else true()


def encode_cursor(values: list[Any]) -> str:
    plain = [{"t": v.isoformat()} if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps(plain)).decode().rstrip("=")


def decode_cursor(token: str, expected: int) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        decoded = [datetime.fromisoformat(v["t"]) if isinstance(v, dict) else v for v in values]
    except (ValueError, TypeError, KeyError):
        raise InvalidRequest("_cursor is not a cursor this server issued", expression=["_cursor"]) from None
    if len(decoded) != expected:
        raise InvalidRequest("_cursor does not fit this search's sort order", expression=["_cursor"])
    return decoded

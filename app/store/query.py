"""SearchRequest criteria → SQL over the search index.

The SQL is built as text in one pass, with named parameters, and the `text()` statement is cached per SQL string:
a search shape is compiled once, and each search costs string joins, not the construction of an expression tree
(which took longer than running the query). Only standard SQL is used, so SQLite and PostgreSQL run the same text.
"""

import base64
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import BigInteger, DateTime, TextClause, bindparam, text
from sqlalchemy.types import TypeEngine

from app.errors import InvalidRequest
from app.fhir.search import Criterion, split_prefix
from app.store import dates
from app.store.indexing import normalise, parse_reference
from app.store.tables import INDEX_TABLES

STRING_SENTINEL_HIGH = "\U0010ffff"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_PLAIN_URI = re.compile(r"^[A-Za-z0-9:/._#-]{1,255}$")
TIMESTAMP = DateTime(timezone=True)
INDEX_TABLE = {kind: table.name for kind, table in INDEX_TABLES.items()}
SORT_COLUMN = {"token": "code", "string": "value_norm", "date": "low"}


@dataclass
class Sql:
    """Parameters and aliases of one statement being built."""

    params: dict[str, Any] = field(default_factory=dict)
    types: dict[str, TypeEngine[Any]] = field(default_factory=dict)
    aliases: int = 0

    def param(self, value: Any, type_: TypeEngine[Any] | None = None) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        if type_ is not None:
            self.types[name] = type_
        return f":{name}"

    def name(self, value: str) -> str:
        """A resource type or parameter name as a literal: part of the search's shape, so PostgreSQL can reuse a
        generic plan for the prepared statement (with them as parameters it re-plans every search, ~2x slower)."""
        if not _NAME.match(value):
            raise InvalidRequest(f"{value!r} is not a valid name", expression=[value])
        return f"'{value}'"

    def constant(self, value: str) -> str:
        """A value that is usually one of few (a code system URI) as a literal when it is plainly safe to inline,
        otherwise a bound parameter. PostgreSQL plans `system = 'urn:oid:…'` once; with a parameter there it
        re-plans every search. The character set admits no quote, so nothing the client sends can end the literal."""
        return f"'{value}'" if _PLAIN_URI.match(value) else self.param(value)

    def alias(self) -> str:
        self.aliases += 1
        return f"a{self.aliases}"

    def statement(self, sql: str, column_types: tuple[tuple[str, TypeEngine[Any]], ...] = ()) -> Any:
        return _compiled(sql, tuple(sorted(self.types.items(), key=lambda item: item[0])), column_types)


@lru_cache(maxsize=4096)
def _compiled(sql: str, types: tuple[tuple[str, TypeEngine[Any]], ...], column_types: tuple[tuple[str, TypeEngine[Any]], ...]) -> Any:
    statement: TextClause = text(sql)
    if types:
        statement = statement.bindparams(*(bindparam(name, type_=type_) for name, type_ in types))
    return statement.columns(**dict(column_types)) if column_types else statement


def condition(sql: Sql, row: str, resource_type: str, criterion: Criterion, *, zone: ZoneInfo, base_url: str) -> str:
    """SQL that holds when the `resource` row aliased `row` (of `resource_type`) matches the criterion."""
    if criterion.name == "_id":
        return f"{row}.res_id IN ({', '.join(sql.param(v) for v in criterion.values)})"
    if criterion.name == "_lastUpdated":
        return _any(_last_updated(sql, row, value, zone) for value in criterion.values)
    table, a = INDEX_TABLE[criterion.type], sql.alias()
    if criterion.modifier == "missing":
        present = f"EXISTS (SELECT 1 FROM {table} {a} WHERE {a}.resource_pk = {row}.pk AND {a}.param = {sql.name(criterion.name)})"
        return f"NOT {present}" if criterion.values == ("true",) else present
    if criterion.chain is not None:
        return _chained(sql, row, resource_type, criterion, zone=zone, base_url=base_url)
    matches = _any(_value(sql, a, criterion, value, zone, base_url) for value in criterion.values)
    if criterion.type == "reference" and criterion.target_type:
        matches = f"{matches} AND {a}.target_type = {sql.name(criterion.target_type)}"
    found = (
        f"{row}.pk IN (SELECT {a}.resource_pk FROM {table} {a} WHERE {a}.res_type = {sql.name(resource_type)}"
        f" AND {a}.param = {sql.name(criterion.name)} AND {matches})"
    )
    return f"NOT {found}" if criterion.modifier == "not" else found


def _any(clauses: Any) -> str:
    items = list(clauses)
    return items[0] if len(items) == 1 else "(" + " OR ".join(f"({c})" for c in items) + ")"


def _value(sql: Sql, a: str, criterion: Criterion, value: str, zone: ZoneInfo, base_url: str) -> str:
    if criterion.type == "token":
        if "|" not in value:
            return f"{a}.code = {sql.param(value)}"
        system, _, code = value.partition("|")
        if not code:
            return f"{a}.system = {sql.constant(system)}"
        return f"{a}.code = {sql.param(code)} AND {a}.system = {sql.constant(system)}"
    if criterion.type == "string":
        if criterion.modifier == "exact":
            return f"{a}.value_exact = {sql.param(value)}"
        pattern = _escape_like(normalise(value))
        pattern = f"%{pattern}%" if criterion.modifier == "contains" else f"{pattern}%"
        return f"{a}.value_norm LIKE {sql.param(pattern)} ESCAPE '\\'"
    if criterion.type == "date":
        prefix, raw = split_prefix(value)
        low, high = dates.date_range(raw, zone)
        return date_condition(sql, prefix, low, high, f"{a}.low", f"{a}.high")
    target = parse_reference(value, base_url)
    if criterion.modifier == "mdm":
        return f"{a}.target_type = 'Patient' AND {a}.target_id IN ({_resident(sql, target[1] if target else value)})"
    if target is None or not target[0]:
        return f"{a}.target_id = {sql.param(target[1] if target else value)}"
    return f"{a}.target_id = {sql.param(target[1])} AND {a}.target_type = {sql.param(target[0])}"


def _resident(sql: Sql, patient_id: str) -> str:
    """The ids of the resident a Patient stands for (`:mdm`, as HAPI FHIR's MDM names it): the Patient, its master
    and every source record of that master, whichever of them `patient_id` is."""
    given = sql.param(patient_id)
    master = f"SELECT x.master_id FROM mpi_record x WHERE x.patient_id = {given}"
    return (f"SELECT m.patient_id FROM mpi_record m WHERE m.master_id = {given} OR m.master_id IN ({master})"
            f" UNION {master} UNION SELECT {given}")


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _chained(sql: Sql, row: str, resource_type: str, criterion: Criterion, *, zone: ZoneInfo, base_url: str) -> str:
    assert criterion.chain is not None and criterion.target_type is not None
    a, target = sql.alias(), sql.alias()
    inner = condition(sql, target, criterion.target_type, criterion.chain, zone=zone, base_url=base_url)
    return (
        f"{row}.pk IN (SELECT {a}.resource_pk FROM search_reference {a} WHERE {a}.res_type = {sql.name(resource_type)}"
        f" AND {a}.param = {sql.name(criterion.name)} AND {a}.target_type = {sql.name(criterion.target_type)}"
        f" AND {a}.target_id IN (SELECT {target}.res_id FROM resource {target}"
        f" WHERE {target}.res_type = {sql.name(criterion.target_type)} AND {target}.deleted = FALSE AND {inner}))"
    )


def date_condition(sql: Sql, prefix: str, low: int, high: int, t_low: str, t_high: str) -> str:
    """FHIR date prefixes over half-open ranges: search [low, high) against target [t_low, t_high)."""
    if prefix == "ap":  # the search range widened by 10% of its distance from now (at least a day), overlapping
        slack = max(abs(dates.micros(dates.now()) - low) // 10, 86_400_000_000)
        low, high, prefix = low - slack, high + slack, "overlaps"

    def lo() -> str:
        return sql.param(low, BigInteger())

    def hi() -> str:
        return sql.param(high, BigInteger())

    if prefix in ("eq", "ne", "ge", "le"):
        bound_low, bound_high = lo(), hi()
        equal = f"({t_low} >= {bound_low} AND {t_high} <= {bound_high})"
        return {
            "eq": equal,
            "ne": f"NOT {equal}",
            "ge": f"({t_high} > {bound_high} OR {equal})",
            "le": f"({t_low} < {bound_low} OR {equal})",
        }[prefix]
    return {
        "gt": lambda: f"{t_high} > {hi()}",
        "lt": lambda: f"{t_low} < {lo()}",
        "sa": lambda: f"{t_low} >= {hi()}",
        "eb": lambda: f"{t_high} <= {lo()}",
        "overlaps": lambda: f"{t_low} < {hi()} AND {t_high} > {lo()}",
    }[prefix]()


def _last_updated(sql: Sql, row: str, value: str, zone: ZoneInfo) -> str:
    """meta.lastUpdated has millisecond precision: its range is [t, t + 1 ms), so the prefixes reduce to bounds."""
    prefix, raw = split_prefix(value)
    low, high = dates.date_range(raw, zone)
    if prefix == "ap":
        slack = max(abs(dates.micros(dates.now()) - low) // 10, 86_400_000_000)
        low, high = low - slack, high + slack
    column = f"{row}.last_updated"

    def at(moment: int) -> str:
        return sql.param(dates.from_micros(moment), TIMESTAMP)

    if prefix in ("gt", "sa"):
        return f"{column} >= {at(high)}"
    if prefix in ("lt", "eb"):
        return f"{column} < {at(low)}"
    if prefix == "ge":
        return f"{column} >= {at(low)}"
    if prefix == "le":
        return f"{column} < {at(high)}"
    inside = f"({column} >= {at(low)} AND {column} < {at(high)})"
    return f"NOT {inside}" if prefix == "ne" else inside


def sort_expression(sql: Sql, row: str, resource_type: str, name: str, descending: bool, kind: str) -> str:
    """A total-order sort key: the lowest (or, descending, highest) indexed value; resources without one sort last."""
    if name == "_id":
        return f"{row}.res_id"
    if name == "_lastUpdated":
        return f"{row}.last_updated"
    a = sql.alias()
    aggregate = "MAX" if descending else "MIN"
    if kind == "date":
        missing = sql.param(dates.MIN_MICROS if descending else dates.MAX_MICROS, BigInteger())
    else:
        missing = sql.param("" if descending else STRING_SENTINEL_HIGH)
    return (
        f"COALESCE((SELECT {aggregate}({a}.{SORT_COLUMN[kind]}) FROM {INDEX_TABLE[kind]} {a}"
        f" WHERE {a}.resource_pk = {row}.pk AND {a}.param = {sql.name(name)} AND {a}.res_type = {sql.name(resource_type)}),"
        f" {missing})"
    )


def after_cursor(sql: Sql, keys: list[tuple[str, bool]], values: list[Any]) -> str:
    """Rows strictly after `values` in the order of `keys` (keyset paging)."""
    bound = [sql.param(v, TIMESTAMP if isinstance(v, datetime) else None) for v in values]
    clauses = []
    for i, (key, descending) in enumerate(keys):
        equal_before = [f"{k} = {b}" for (k, _), b in zip(keys[:i], bound[:i], strict=True)]
        clauses.append(" AND ".join([*equal_before, f"{key} {'<' if descending else '>'} {bound[i]}"]))
    return "(" + " OR ".join(f"({c})" for c in clauses) + ")"


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


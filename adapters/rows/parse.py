"""Rows of CSV and JSON exports → SourceRecords: HIS database views dumped on a schedule, public-health forms,
family-doctor contracts. One row is one inbound message, so one bad row is kept and replayed alone.

A file is split into rows whose stored bytes are themselves a file of one row: for CSV the header line and the row's
lines, in the file's own bytes and character set; for JSON Lines the line; for a JSON array the element, re-encoded
as UTF-8 JSON. Parsing a stored row needs only those bytes and the kind (which mapping applies), named by whoever
sent the file.

Paths: a column or key (`姓名`, `sbp`), dotted into nested JSON objects (`doctor.name`). Inside `each`, a path that
starts with a dot is the current item's (`.` the item itself, `.dose` its key) and any other still the row's.
`each` on a JSON list gives one item per element; on a text value (a CSV cell such as `2,4` for a multiple-choice
question) one per part between the separators `, ; | 、 ，`.
"""

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.base import BOM, DETECTED, MessageError, Scope, SourceRecord, decode_first

CSV, JSON = "csv", "json"
_SEPARATORS = re.compile(r"[,;|、，；]")


def parse(raw: bytes, *, kind: str, default_charset: str | None = None) -> SourceRecord:
    """One stored row (CSV header + row, or one JSON object) of the given kind."""
    text, charset = decode(raw, default_charset=default_charset)
    if text.lstrip().startswith("{"):
        values = _json(text, "row")
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        if len(rows) != 1:
            raise MessageError(f"a stored CSV row must be a header and one row, not {len(rows)} rows", "row", "structure")
        if None in rows[0]:
            raise MessageError("the row has more values than the header has columns", "row", "structure")
        values = rows[0]
    if not isinstance(values, dict):
        raise MessageError("a row must be a JSON object or a CSV row", "row", "structure")
    return SourceRecord(kind=kind, control_id=None, scope=RowScope(values), charset=charset)


def split(data: bytes, *, file_format: str, default_charset: str | None = None) -> list[bytes]:
    """The rows of a file, each as the bytes `parse` reads. A file that cannot be split at all raises MessageError."""
    if file_format == CSV:
        return _csv_rows(data, default_charset)
    text, _ = decode(data, default_charset=default_charset)
    if text.lstrip().startswith("["):
        return [orjson.dumps(item) for item in _json(text, "file")]
    body = data.removeprefix(BOM)
    return [line.strip() for line in body.splitlines() if line.strip()]  # JSON Lines: each line kept as sent


def decode(raw: bytes, *, default_charset: str | None = None) -> tuple[str, str]:
    """Text and the codec used: UTF-8 when a BOM says so, else the source's character set, else the first of
    UTF-8 and GB18030 (which reads GBK and GB2312, what Chinese Excel and HIS dumps write) that decodes strictly."""
    body = raw.removeprefix(BOM)
    candidates = ["utf-8"] if raw.startswith(BOM) else [c for c in (default_charset, *DETECTED) if c]
    decoded = decode_first(body, candidates)
    if decoded is None:
        raise MessageError(f"the row is in none of the character sets tried ({', '.join(dict.fromkeys(candidates))})", "row", "structure")
    return decoded


def _json(text: str, where: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise MessageError(f"the {where} is not valid JSON: {error}", where, "structure") from error


def _csv_rows(data: bytes, default_charset: str | None) -> list[bytes]:
    """Header + each row, in the file's bytes: rows are cut where the csv module ends them, so a quoted value with
    a line break stays in its row."""
    text, codec = decode(data, default_charset=default_charset)
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    header, consumed = lines[0], []
    rows: list[bytes] = []

    def feed() -> Any:
        for line in lines[1:]:
            consumed.append(line)
            yield line

    reader = csv.reader(feed())
    for fields in reader:
        row_text = "".join(consumed)
        consumed.clear()
        if any(f.strip() for f in fields):
            rows.append((header.rstrip("\r\n") + "\n" + row_text).encode(codec))
    return rows


@dataclass
class RowScope:
    """A row's values by column or key; `each` narrows to one item of a list or one part of a multiple-choice cell."""

    values: Any
    item: Any = None

    def get(self, path: str) -> str | None:
        return _text(self._raw(path))

    def each(self, path: str) -> list[Scope]:
        value = self._raw(path)
        if value is None:
            return []
        if isinstance(value, list):
            return [RowScope(self.values, item) for item in value if item not in (None, "", {}, [])]
        if isinstance(value, str):
            return [RowScope(self.values, part.strip()) for part in _SEPARATORS.split(value) if part.strip()]
        return [RowScope(self.values, value)]

    def _raw(self, path: str) -> Any:
        if path.startswith("."):
            if self.item is None:
                raise MessageError(f"relative path {path!r} outside each", path)
            value, keys = self.item, path[1:].split(".") if path != "." else []
        else:
            value, keys = self.values, path.split(".")
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    return text or None

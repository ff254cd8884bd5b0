"""HL7 v2 bytes → SourceRecord: the character set, the segment ends and the parse tree, then values read by path.

python-hl7 (`hl7` on PyPI) reads the separators MSH declares and the escape sequences; a field is split by those
separators only when a path reads it (python-hl7's whole tree cost an ORU^R01 about 1 ms, as much as mapping it;
parsing is now 0.13 ms, `tests.benchmarks.hl7_stages`; a test holds every field to what python-hl7 makes of the
whole message). What python-hl7 leaves to the caller is decoding bytes, which real Chinese feeds make hard (GB18030
with or without MSH-18, UTF-8 with a BOM), and segment ends other than CR. Paths read like the standard's own
notation:

    PID-5.1          field 5, component 1 (first repetition)
    PID-3[5=NNCHN].1 the repetition of PID-3 whose component 5 is NNCHN, its component 1 (`|` separates choices)
    PID-13[2].1      the second repetition
    OBX(3.1=SBP|8480-6)-5
                     field 5 of the first OBX whose field 3, component 1 is SBP or 8480-6 (a result picked by
                     its code, wherever it stands in the message)
    .1               in a scope made by each("PID-13"): component 1 of the current repetition
"""

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import hl7

from adapters.base import BOM, DETECTED, MessageError, Scope, SourceRecord, decode_first

#: HL7 table 0211 (MSH-18) → Python codec; GB2312 and GBK arrive labelled in many ways and GB18030 decodes them all.
CHARSETS = {
    "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "UTF8": "utf-8", "UNICODE": "utf-8",
    "GB 18030-2000": "gb18030", "GB18030": "gb18030", "GB 18030": "gb18030", "GBK": "gb18030", "GB2312": "gb18030",
    "GB 2312": "gb18030", "ISO IR58": "gb18030", "CNS 11643-1992": "big5", "BIG-5": "big5",
    "ASCII": "ascii", "8859/1": "latin-1",
}
_PATH = re.compile(r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:\((?P<where>\d+(?:\.\d+)?)=(?P<wanted>[^)]+)\))?-(?P<field>\d+)"
                   r"(?:\[(?P<select>[^\]]+)\])?(?P<rest>(?:\.\d+){0,2})$")
_RELATIVE = re.compile(r"^(?:\.\d+){1,2}$")
Repetition = list[list[str]]  # components, each a list of subcomponents
#: python-hl7 logs the text of a field whose escape sequence it cannot read (a resident's name, say), under a logger
#: named by its file's path, which no level setting of ours would reach: silenced here, where it is used.
hl7.util.logger.disabled = True


@dataclass
class Hl7Message:
    """A message as its segments' fields, each kept as text until a path reads it (an ORU^R01 of 10 OBX has 188
    fields; its mapping reads 90), with python-hl7's reading of MSH: the separators it declares and the escape
    sequences (`unescape`). Fields are numbered as the standard numbers them: MSH-1 is the field separator itself."""

    segments: list[list[str]]
    header: Any  # python-hl7's Message of the MSH segment

    def split(self, text: str) -> list[Repetition]:
        """A field's repetitions, components and subcomponents, in the separators' order, each value unescaped
        (most fields hold one value, and no escape character)."""
        _, _, repetition, component, subcomponent = self.header.separators
        plain = self.header.esc not in text
        if plain and repetition not in text and component not in text and subcomponent not in text:
            return [[[text]]]  # most fields: one value
        tree = [[part.split(subcomponent) for part in item.split(component)] for item in text.split(repetition)]
        if plain:
            return tree
        unescape = self.header.unescape
        return [[[unescape(value) for value in part] for part in item] for item in tree]


def parse(raw: bytes, *, default_charset: str | None = None) -> SourceRecord:
    """Decode and parse one message; MessageError says what is wrong and where."""
    text, charset = decode(raw, default_charset=default_charset)
    lines = text.split("\r")
    try:
        header = hl7.parse(lines[0])
    except Exception as error:  # python-hl7 raises plain Python errors on malformed input
        raise MessageError(f"the message cannot be parsed as HL7 v2: {type(error).__name__}", "MSH", "structure") from error
    separator = header.separators[1]
    segments = [line.split(separator) for line in lines]
    segments[0].insert(1, separator)
    scope = Hl7Scope(Hl7Message(segments, header))
    kind = "^".join(part for part in (scope.get("MSH-9.1"), scope.get("MSH-9.2")) if part)
    if not kind:
        raise MessageError("MSH-9 (message type) is empty", "MSH-9", "required")
    return SourceRecord(kind=kind, control_id=scope.get("MSH-10"), scope=scope, charset=charset)


def split_batch(data: bytes) -> list[bytes]:
    """The messages of a file: each starts at an MSH segment (batch headers FHS/BHS and trailers are dropped)."""
    body = data.removeprefix(BOM)
    starts = [m.start() for m in re.finditer(rb"(?:^|(?<=[\r\n]))MSH", body)]
    messages = [body[a:b] for a, b in zip(starts, [*starts[1:], len(body)], strict=True)]
    return [re.split(rb"[\r\n](?:BTS|FTS)", m)[0] for m in messages if m.strip()]


def decode(raw: bytes, *, default_charset: str | None = None) -> tuple[str, str]:
    """The message as text with CR segment ends, and the codec used: MSH-18 when it names a character set the bytes
    are valid in, else the source's default, else the first of UTF-8, GB18030 that decodes strictly."""
    body = raw.removeprefix(BOM)
    body = body.strip(b"\x00\t\n\r\x0b\x1c ")
    if not body.startswith(b"MSH") or len(body) < 8:
        raise MessageError("not an HL7 v2 message: it must begin with an MSH segment", "MSH", "structure")
    declared = CHARSETS.get(_declared_charset(body).upper())
    decoded = decode_first(body, [c for c in (declared, "utf-8" if raw.startswith(BOM) else None, default_charset, *DETECTED) if c])
    if decoded is not None:
        return _segments(decoded[0]), decoded[1]
    raise MessageError("the message is in no known character set (tried MSH-18, the source's default, UTF-8, GB18030)",
                       "MSH-18", "structure")


def _declared_charset(body: bytes) -> str:
    """MSH-18 read from the undecoded bytes (it is ASCII); the first repetition when several are given."""
    first = re.split(rb"[\r\n]", body, maxsplit=1)[0]
    separator = first[3:4]
    fields = first.split(separator)
    if len(fields) <= 17:
        return ""
    repetition = fields[1][1:2] or b"~"
    return fields[17].split(repetition)[0].decode("ascii", errors="replace").strip()


def _segments(text: str) -> str:
    """Segments end in CR on the wire; files and some feeds use LF or CRLF. Blank lines are dropped."""
    lines = re.split(r"\r\n|\r|\n", text)
    return "\r".join(line for line in lines if line.strip())


@dataclass
class Hl7Scope:
    """A parsed message, read by path; `each` narrows it to one segment occurrence or one field repetition."""

    message: Hl7Message
    current: dict[str, Any] = field(default_factory=dict)
    repetition: Repetition | None = None
    by_id: dict[str, list[Any]] = field(default_factory=dict)  # the message's segments by id, shared by its scopes
    fields: dict[tuple[int, int], list[Repetition]] = field(default_factory=dict)  # unescaped fields, shared likewise
    values: dict[str, str | None] = field(default_factory=dict)  # this scope's reads by path

    def get(self, path: str) -> str | None:
        """Remembered per scope: a mapping reads many paths more than once (an ORU's OBX-3.1 names its
        Observation and picks its LOINC code, category, display and unit): 231 reads per ORU^R01, 127 distinct."""
        if path not in self.values:
            self.values[path] = self._read(path)
        return self.values[path]

    def _read(self, path: str) -> str | None:
        parsed = _parse_path(path)
        if parsed is None:
            if self.repetition is None:
                raise MessageError(f"relative path {path!r} outside a field repetition", path)
            return _leaf(self.repetition, path)
        segment_id, where, wanted, number, select, rest = parsed
        segment = self._where(segment_id, where, wanted) if where and wanted else None
        repetitions = self._repetitions(segment_id, number, segment)
        chosen = _select(repetitions, select, path)
        return _leaf(chosen, rest) if chosen is not None else None

    def _where(self, segment_id: str, where: str, wanted: str) -> Any:
        """The first segment of the message whose field (`3` or `3.1`) holds one of the wanted values; False when none
        does (so the path reads nothing)."""
        number, _, component = where.partition(".")
        choices = set(wanted.split("|"))
        for segment in self._segments(segment_id):
            first = self._repetitions(segment_id, int(number), segment)[:1]
            if first and _leaf(first[0], f".{component or 1}") in choices:
                return segment
        return False

    def each(self, path: str) -> list[Scope]:
        if re.fullmatch(r"[A-Z][A-Z0-9]{2}", path):
            return [Hl7Scope(self.message, {**self.current, **group}, None, self.by_id, self.fields) for group in self._groups(path)]
        match = _PATH.match(path)
        if match is None or match["select"] or match["rest"] or match["where"]:
            raise MessageError(f"each needs a segment (OBX) or a field (PID-13), not {path!r}", path)
        repetitions = self._repetitions(match["segment"], int(match["field"]))
        return [Hl7Scope(self.message, self.current, r, self.by_id, self.fields) for r in repetitions if any(any(c) for c in r)]

    def _groups(self, segment_id: str) -> list[dict[str, Any]]:
        """Each occurrence of the segment with the segments that follow it up to the next one (its group: an ORC's
        OBR and NTE). A segment that stands only in other groups is absent from this one (an order without a note
        does not take the next order's). One that also stands before the first occurrence heads the groups: each
        reads the nearest one before it (PID and PV1, once per message; an ORU's OBR, so that the OBX after a
        second OBR are that order's results), except a note (NTE), which belongs to the segment it follows: one
        before the first occurrence stays the message's."""
        segments = self.message.segments
        starts = [i for i, segment in enumerate(segments) if segment[0] == segment_id]
        if not starts:
            return []
        outside = {segment[0] for segment in segments[: starts[0]]}
        inside = {segment[0] for segment in segments[starts[0]:]} - outside
        groups = []
        heads: dict[str, Any] = {}  # the nearest segment of each heading kind so far
        scanned = 0
        for start, end in zip(starts, [*starts[1:], len(segments)], strict=True):
            for segment in segments[scanned:start]:
                kind = segment[0]
                if kind in outside and (kind != "NTE" or kind not in heads):
                    heads[kind] = segment
            scanned = start
            group: dict[str, Any] = {**heads, **dict.fromkeys(inside)}
            for segment in reversed(segments[start:end]):
                if segment[0] in inside:
                    group[segment[0]] = segment
            groups.append(group)
        return groups

    def _segments(self, segment_id: str) -> list[Any]:
        if not self.by_id:
            for segment in self.message.segments:
                self.by_id.setdefault(segment[0], []).append(segment)
        return self.by_id.get(segment_id, [])

    def _repetitions(self, segment_id: str, number: int, segment: Any = None) -> list[Repetition]:
        """Field `number`'s repetitions, of `segment` when given (False: none), else of the scope's own segment of
        that id."""
        if segment is None and segment_id in self.current:
            segment = self.current[segment_id]  # None: not in this scope's group
        elif segment is None:
            found = self._segments(segment_id)
            segment = found[0] if found else None
        if not segment or number >= len(segment) or number < 1:
            return []
        if segment_id == "MSH" and number in (1, 2):
            return [[[segment[number]]]]
        key = (id(segment), number)  # the segment lives as long as the message, and so does this cache
        if key not in self.fields:
            self.fields[key] = self.message.split(segment[number])
        return self.fields[key]


@lru_cache(maxsize=4096)
def _parse_path(path: str) -> tuple[str, str | None, str | None, int, str | None, str] | None:
    """A path's parts (segment, where-field, wanted values, field number, repetition selector, component and
    subcomponent); None for a relative path. Mappings read the same few hundred paths in every message."""
    if _RELATIVE.match(path):
        return None
    match = _PATH.match(path)
    if match is None:
        raise MessageError(f"invalid HL7 v2 path {path!r}", path)
    return match["segment"], match["where"], match["wanted"], int(match["field"]), match["select"], match["rest"]


def _select(repetitions: list[Repetition], select: str | None, path: str) -> Repetition | None:
    if not repetitions:
        return None
    if select is None:
        return repetitions[0]
    if select.isdigit():
        index = int(select) - 1
        return repetitions[index] if 0 <= index < len(repetitions) else None
    component, _, values = select.partition("=")
    if not component.isdigit() or not values:
        raise MessageError(f"invalid repetition selector [{select}] in {path!r}", path)
    wanted = set(values.split("|"))
    for repetition in repetitions:
        if _leaf(repetition, f".{component}") in wanted:
            return repetition
    return None


def _leaf(repetition: Repetition, rest: str) -> str | None:
    component, subcomponent = _position(rest)
    if not 1 <= component <= len(repetition):
        return None
    subcomponents = repetition[component - 1]
    if not 1 <= subcomponent <= len(subcomponents):
        return None
    value = subcomponents[subcomponent - 1].strip()
    return value if value and value != '""' else None


@lru_cache(maxsize=256)
def _position(rest: str) -> tuple[int, int]:
    """".2.1" → (2, 1): component and subcomponent, 1 when not given."""
    numbers = [int(n) for n in rest.strip(".").split(".") if n] if rest else []
    component, subcomponent = (numbers + [1, 1])[:2]
    return component, subcomponent

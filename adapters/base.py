"""What every adapter hands the mapping engine: a record whose values are read by path, and the errors it raises."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

BOM = b"\xef\xbb\xbf"
#: tried in this order when nothing says which character set: GB18030 also reads GBK and GB2312
DETECTED = ("utf-8", "gb18030")


def decode_first(body: bytes, candidates: Iterable[str]) -> tuple[str, str] | None:
    """The text and codec of the first candidate that decodes the bytes strictly; None when none does. A NUL
    character is refused: no text format allows it and PostgreSQL cannot store it in a text column."""
    for codec in dict.fromkeys(candidates):
        try:
            text = body.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
        nul = text.find("\x00")
        if nul >= 0:
            raise MessageError(f"character {nul + 1} is NUL (0x00), which a text message may not contain", "message", "structure")
        return text, codec
    return None


class Scope(Protocol):
    """Values of one source record (or of one repeated part of it) read by path; the path syntax is the adapter's."""

    def get(self, path: str) -> str | None:
        """The value at `path`; None when absent or empty."""
        ...

    def each(self, path: str) -> list["Scope"]:
        """One scope per occurrence of the repeated part at `path` (segments, field repetitions, list items)."""
        ...


@dataclass
class SourceRecord:
    """One inbound message or row, parsed: its kind selects the mapping (e.g. `ADT^A01`)."""

    kind: str
    control_id: str | None
    scope: Scope
    charset: str | None = None


class MessageError(Exception):
    """A message that cannot be parsed or mapped; `location` names the field or rule (e.g. `PID-7`, `MSH-9`) and
    `issue` is the FHIR issue type (required, value, code-invalid, structure, not-supported)."""

    def __init__(self, message: str, location: str | None = None, issue: str = "value") -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.issue = issue

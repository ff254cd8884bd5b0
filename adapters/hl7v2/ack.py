"""HL7 v2 acknowledgements: MSA AA (applied), AE (kept, could not be applied: fix and replay), AR (rejected: not a
message Qiao can read), with an ERR segment that says what is wrong and where (HL7 table 0357 codes)."""

import re
from datetime import datetime

from adapters.base import SourceRecord

ACCEPTED, ERROR, REJECTED = "AA", "AE", "AR"
#: HL7 table 0357 (message error condition codes) used here
SEGMENT_SEQUENCE, REQUIRED_FIELD, DATA_TYPE, TABLE_VALUE, UNSUPPORTED_TYPE, INTERNAL = "100", "101", "102", "103", "200", "207"
_CODE_TEXT = {"100": "Segment sequence error", "101": "Required field missing", "102": "Data type error",
              "103": "Table value not found", "200": "Unsupported message type", "207": "Application internal error"}
_LOCATION = re.compile(r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:-(?P<field>\d+))?")


def acknowledge(record: SourceRecord | None, code: str, *, text: str = "", error_code: str | None = None,
                location: str | None = None, charset: str = "utf-8", moment: datetime | None = None,
                control_id: str = "") -> bytes:
    """The ACK for `record` (None when the message could not be read at all), encoded like the message was."""
    scope = record.scope if record else None

    def value(path: str) -> str:
        return (scope.get(path) if scope else None) or ""

    stamp = (moment or datetime.now()).strftime("%Y%m%d%H%M%S")
    trigger = value("MSH-9.2")
    header = ["MSH", "^~\\&", "QIAO", "QIAO", _escape(value("MSH-3")), _escape(value("MSH-4")), stamp, "",
              f"ACK^{trigger}^ACK" if trigger else "ACK", control_id or f"ACK{stamp}", value("MSH-11") or "P",
              value("MSH-12") or "2.5", "", "", "", "", "", _charset_name(charset)]
    segments = ["|".join(header), "|".join(["MSA", code, _escape(record.control_id or "" if record else ""), _escape(text[:80])])]
    if error_code is not None:
        segments.append("|".join(["ERR", "", _error_location(location), f"{error_code}^{_CODE_TEXT.get(error_code, '')}^HL70357",
                                  "E" if code != ACCEPTED else "W", "", "", "", _escape(text)]))
    return ("\r".join(segments) + "\r").encode(charset, errors="replace")


def _error_location(location: str | None) -> str:
    match = _LOCATION.match(location or "")
    if match is None:
        return ""
    return f"{match['segment']}^1^{match['field']}" if match["field"] else f"{match['segment']}^1"


def _charset_name(codec: str) -> str:
    return {"utf-8": "UNICODE UTF-8", "gb18030": "GB 18030-2000", "ascii": "ASCII", "latin-1": "8859/1", "big5": "BIG-5"}.get(codec, "")


def _escape(text: str) -> str:
    text = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\").replace("~", "\\R\\")
    return re.sub(r"[\r\n]+", " ", text)

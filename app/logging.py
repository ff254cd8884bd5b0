"""Structured (JSON line) logs. Log identifiers only (resource type and id, request id), never personal values.

As a second line of defence, anything shaped like a resident ID number or a mainland mobile number is masked in
every line, and the libraries that would log SQL parameters or request URLs (which carry search values) are kept
at WARNING whatever the level.
"""

import logging
import re
import sys

import orjson

#: GB 11643 ID numbers (18 characters, or legacy 15 digits) and mainland mobile numbers, not inside longer numbers.
PERSONAL_PATTERN = re.compile(r"(?<![0-9A-Za-z])(?:\d{17}[0-9Xx]|\d{15}|1[3-9]\d{9})(?![0-9A-Za-z])")
QUIET_LOGGERS = ("sqlalchemy", "httpx", "httpcore", "alembic", "uvicorn.access", "hpack", "asyncio", "multipart", "hl7")


def mask(text: str) -> str:
    return PERSONAL_PATTERN.sub("[masked]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, *, masking: bool = True) -> None:
        super().__init__()
        self.masking = masking

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        line = orjson.dumps(entry, default=str).decode()
        return mask(line) if self.masking else line


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def fields(**values: object) -> dict[str, object]:
    """`log.info("resource.created", extra=fields(resource_type=..., resource_id=...))`."""
    return {"fields": values}

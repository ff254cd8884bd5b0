"""Files a source drops (`qiao ingest`, `POST /ingest/files`): an HL7 v2 batch, or a CSV or JSON export whose rows
are each stored and processed as one message, so a bad row is kept and replayed alone and the rest go through."""

from dataclasses import dataclass, field
from pathlib import PurePath

from adapters.base import MessageError
from adapters.hl7v2.parse import split_batch
from adapters.rows import parse as rows
from app.errors import InvalidRequest
from app.ingest import pipeline
from app.ingest.sources import Source
from app.mapping import engine

BATCH = 100  # messages stored, then applied, together
FORMATS = {".csv": rows.CSV, ".json": rows.JSON, ".jsonl": rows.JSON, ".ndjson": rows.JSON}


@dataclass
class Tally:
    """What became of a file's messages."""

    counts: dict[str, int] = field(default_factory=dict)
    failures: list[pipeline.Outcome] = field(default_factory=list)

    def add(self, outcome: pipeline.Outcome) -> None:
        self.counts[outcome.state] = self.counts.get(outcome.state, 0) + 1
        if outcome.state == "failed":
            self.failures.append(outcome)


def ingest(data: bytes, *, file_name: str, source: Source, channel: str, kind: str | None = None) -> Tally:
    """Store and process every message of a file. The format is the file name's extension (.csv, .json, .jsonl,
    .ndjson: an export; anything else: HL7 v2); an export's kind is `kind`, else the source's `files` pattern."""
    tally = Tally()
    file_format = FORMATS.get(PurePath(file_name).suffix.lower())
    if file_format is None:
        _receive(tally, [pipeline.Inbound(raw, channel, pipeline.HL7V2, source) for raw in split_batch(data)])
        return tally
    kind = export_kind(file_name, source, kind)
    try:
        parts = rows.split(data, file_format=file_format, default_charset=source.charset)
    except MessageError as error:
        tally.add(pipeline.keep_unreadable(data, kind=kind, channel=channel, source=source, error=error))
        return tally
    _receive(tally, [pipeline.Inbound(raw, channel, pipeline.ROWS, source, kind) for raw in parts])
    return tally


def _receive(tally: Tally, messages: list[pipeline.Inbound]) -> None:
    for start in range(0, len(messages), BATCH):
        for outcome in pipeline.receive(messages[start:start + BATCH]):
            tally.add(outcome)


def export_kind(file_name: str, source: Source, kind: str | None) -> str:
    """The kind named, else the one the source's file patterns give; it must have a mapping."""
    chosen = kind or source.kind_of(PurePath(file_name).name)
    known = engine.kinds(pipeline.ROWS)
    if chosen is None:
        raise InvalidRequest(f"which kind of export is {file_name!r}? name it (kinds: {', '.join(known)}), or add a "
                             f"pattern to the source's `files`", expression=["kind"])
    if chosen not in known:
        raise InvalidRequest(f"no mapping for exports of kind {chosen!r} (kinds: {', '.join(known)})", expression=["kind"])
    return chosen

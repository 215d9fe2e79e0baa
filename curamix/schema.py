"""Fixed Arrow schemas of the document store, the decision ledger and the quarantine table.

Every stage reads and writes Parquet with these schemas. Stages may add columns to the
document schema or write a subset of rows; none rewrites ``text``.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("n_chars", pa.int64(), nullable=False),
        pa.field("n_words", pa.int64(), nullable=False),
        # The record's other fields as a JSON object string (null when there are none).
        pa.field("meta", pa.string()),
    ]
)
"""Documents: ``id`` unique within a dataset; ``source`` is the file the record came from."""

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("ref_id", pa.string()),
    ]
)
"""One row per input document per stage: what the stage did with it and why."""

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        # The raw record (decoded with replacement when it was not valid UTF-8), for recovery.
        pa.field("raw", pa.string()),
    ]
)
"""Bad input: the file, the 1-based record (line or row) number, the reason and the raw record.

``record`` is 0 for a problem with the whole file (unreadable) and the number of the first
record that could not be read for a truncated file.
"""


class Decision(StrEnum):
    """What a stage did with a document."""

    KEPT = "kept"
    REMOVED = "removed"
    QUARANTINED = "quarantined"


class QuarantineReason(StrEnum):
    """Why ingest set a record aside."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_UTF8 = "invalid_utf8"
    MISSING_TEXT = "missing_text"
    NON_STRING_TEXT = "non_string_text"
    EMPTY_TEXT = "empty_text"
    TOO_LARGE = "too_large"
    DUPLICATE_ID = "duplicate_id"
    MISSING_DOMAIN = "missing_domain"
    UNREADABLE_FILE = "unreadable_file"
    TRUNCATED_FILE = "truncated_file"
    TOO_DEEP = "too_deep"
    RECORD_ERROR = "record_error"
    """Any other exception while turning one record into a document (the type in ``detail``)."""


def empty_table(schema: pa.Schema) -> pa.Table:
    """An empty table with ``schema`` (so a stage with no rows still writes a readable file)."""
    return schema.empty_table()

"""The forwarder's journal records, ``receipt`` and ``forward_error``: their fields are in
docs/journal-format.md, section 4. A ``receipt`` record is a collector's signed receipt with the
record's own ``host`` (which the forwarder checked the receipt names) and the receipt's time as
``collector_ts`` (``ts`` is the record's); ``receipt_of`` gives the receipt back to check."""

from __future__ import annotations

from agent.collector.protocol import RECEIPT_FORMAT, Receipt
from agent.errors import FormatError
from agent.journal.canonical import JsonValue
from agent.journal.record import Record

#: Receipt fields the record leaves out (``host``: the record's own) or renames (``ts``).
_AS_RECORD = {
    "collector": "collector",
    "size": "size",
    "root": "root",
    "ts": "collector_ts",
    "key_id": "key_id",
    "sig": "sig",
}


def receipt_fields(receipt: Receipt) -> dict[str, JsonValue]:
    """The fields of the ``receipt`` record that journals ``receipt``."""
    doc = receipt.to_dict()
    return {name: doc[key] for key, name in _AS_RECORD.items()}


def receipt_of(record: Record) -> Receipt:
    """The receipt a ``receipt`` record holds, to check with the collector's key (the exact
    inverse of ``receipt_fields``); ``FormatError`` names what is wrong."""
    if record.type != "receipt":
        raise FormatError(f"a {record.type} record is not a receipt")
    doc = {key: record.fields[name] for key, name in _AS_RECORD.items()}
    return Receipt.from_dict({**doc, "format": RECEIPT_FORMAT, "host": record.host})

"""The receipt record: journaled by a real writer, read back, checked with the collector key."""

from __future__ import annotations

import pytest

from agent.collector.protocol import Receipt
from agent.errors import FormatError
from agent.forward.records import receipt_fields, receipt_of
from agent.journal.keys import SigningKey
from agent.journal.reader import iter_records
from tests.forward.conftest import Journal


def test_a_journaled_receipt_is_the_receipt_again(journal: Journal) -> None:
    key = SigningKey.generate()
    receipt = Receipt.sign(key, "coll-1", journal.host, 12, b"\x07" * 32, 1_764_146_065 * 10**9)
    w = journal.writer()
    w.append("receipt", receipt_fields(receipt))
    w.close({"reason": "test"})
    assert journal.verify(strict=True).ok
    record = next(r for _, r in iter_records(journal.dir) if r is not None)
    assert record.type == "receipt" and record.fields["collector_ts"] == str(receipt.ts)
    again = receipt_of(record)
    assert again == receipt
    again.verify(key.public, host=journal.host)
    with pytest.raises(FormatError, match="not the collector key"):
        again.verify(SigningKey.generate().public)


def test_a_receipt_record_with_a_wrong_field_names_it(journal: Journal) -> None:
    key = SigningKey.generate()
    fields = receipt_fields(Receipt.sign(key, "coll-1", journal.host, 3, b"\0" * 32, 5))
    w = journal.writer()
    w.append("receipt", {**fields, "collector_ts": "007"})
    w.close({"reason": "test"})
    record = next(r for _, r in iter_records(journal.dir) if r is not None)
    with pytest.raises(FormatError, match="leading zero"):
        receipt_of(record)

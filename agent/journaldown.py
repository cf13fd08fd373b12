"""While the journal cannot be written (a full disk, a failing device): enforcement goes on.

A failed write closes the journal (``agent.journal.live``: the line may be torn, reopening cuts
it and says so). The agent does not stop with it: what enforces (the in-kernel guard, fanotify's
thread, the enforcer's kills) never waits on the journal, so the service loop swaps in
``JournalDown``, which counts by type what would have been journaled, and tries to open the
journal again every ``REOPEN_SECONDS``. Once it opens, the first record after the writer's own
``recovery`` record is a ``loss`` record saying what was not recorded, from when to when, and
why; nothing written before the failure is touched (the writer only cuts a torn last line).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from agent.journal.canonical import JsonValue
from agent.native.encoder import EventEncoder

#: How often the agent tries to open the journal again while it cannot be written.
REOPEN_SECONDS = 5.0


class Journal(Protocol):
    """What the service loop and the recorder write to: a ``JournalWriter``, or a
    ``JournalDown`` while the journal cannot be written."""

    host: str
    boot_id: str

    @property
    def takes_events(self) -> bool: ...
    @property
    def sealed_size(self) -> int: ...
    def append(self, type: str, fields: Mapping[str, JsonValue]) -> int: ...
    def append_many(self, records: Sequence[tuple[str, Mapping[str, JsonValue]]]) -> int: ...
    def append_events(
        self, encoder: EventEncoder, batch: bytes, pos: int
    ) -> tuple[int, int, int]: ...
    def tick(self) -> None: ...
    def flush_and_seal(self) -> int | None: ...
    def close(self, fields: Mapping[str, JsonValue] | None = None) -> None: ...


class JournalDown:
    """Stands in for the ``JournalWriter`` whose write failed (module doc)."""

    takes_events = False  # the Python record path: nothing is encoded for nobody

    def __init__(self, host: str, boot_id: str, sealed_size: int, error: str) -> None:
        self.host = host
        self.boot_id = boot_id
        self._sealed_size = sealed_size  # what the forwarder may still send
        self.error = error
        self.since_ns = time.time_ns()
        self.lost: collections.Counter[str] = collections.Counter()

    @property
    def sealed_size(self) -> int:
        return self._sealed_size

    @property
    def total(self) -> int:
        return sum(self.lost.values())

    def append(self, type: str, fields: Mapping[str, JsonValue]) -> int:
        del fields
        self.lost[type] += 1
        return -1

    def append_many(self, records: Sequence[tuple[str, Mapping[str, JsonValue]]]) -> int:
        for rtype, _ in records:
            self.lost[rtype] += 1
        return 0

    def append_events(self, encoder: EventEncoder, batch: bytes, pos: int) -> tuple[int, int, int]:
        raise AssertionError("takes_events is False: the native path is not used")

    def tick(self) -> None:
        pass

    def flush_and_seal(self) -> int | None:
        return None

    def close(self, fields: Mapping[str, JsonValue] | None = None) -> None:
        del fields

    def loss_fields(self) -> dict[str, JsonValue]:
        """The ``loss`` record that opens the journal again."""
        lost: dict[str, JsonValue] = dict(sorted(self.lost.items()))
        return {
            "drops": {"journal_unwritable": self.total},
            "reason": "journal_unwritable",
            "error": self.error,
            "since_ns": str(self.since_ns),
            "until_ns": str(time.time_ns()),
            "records_by_type": lost,
        }

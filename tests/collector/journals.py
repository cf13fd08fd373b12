"""Real journals for the collector tests, written by the agent's own writer (``Journal`` of the
journal tests), one directory per host under a common root."""

from __future__ import annotations

from pathlib import Path

from tests.unit.journal.conftest import Journal


class HostJournal(Journal):
    """The journal and keys of one host: ``root/HOST/journal`` and ``root/HOST/keys``."""

    def __init__(self, root: Path, host: str) -> None:
        super().__init__(root / host, host)

    @property
    def pub(self) -> Path:
        """The genesis public key file, what ``collector enroll --journal-key`` takes."""
        return self.keys / "journal.pub"

    def lines(self) -> list[bytes]:  # type: ignore[override]
        """Every stored line, in order, without its newline."""
        return [data for _, _, data in super().lines()]

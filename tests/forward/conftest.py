"""Forwarding tests: journals written by ``JournalWriter`` (the journal tests' ``Journal``)."""

from __future__ import annotations

from tests.unit.journal.conftest import Journal, journal

__all__ = ["Journal", "journal"]

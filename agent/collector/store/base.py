"""The one store interface of the collector; ``sqlite`` and ``postgres`` implement it.

What a store keeps, per enrolled host: the binding (name, client-certificate fingerprint,
genesis journal key), every accepted record (the line's bytes exactly as received and its
record hash, keyed by host and seq), the head (accepted size, chain state, last checkpoint,
times, status) and rejected data kept aside for forensics. It judges nothing: the verifier
decides what to append; the store makes it durable, exactly once, or refuses because another
collector got there first (compare-and-swap on the head's size).

Chain state and checkpoint are opaque JSON text to the store (the ingest side's
``ChainState.to_dict()`` and accepted checkpoint), returned exactly as given.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agent.closing import Closing


class Status(enum.StrEnum):
    """A host's stored state. ``lagging`` and ``silent`` are not stored: they follow from the
    head's times and the heartbeat, when someone looks."""

    OK = "ok"
    GAP = "gap"
    FORK = "fork"
    TAMPER = "tamper"
    ROLLBACK = "rollback"
    UNENROLLED_KEY = "unenrolled-key"


@dataclass(frozen=True)
class Host:
    name: str
    #: ``pki.fingerprint`` of the client certificate: SHA-256 of its DER, hex.
    fingerprint: str
    #: The genesis journal key, ``PublicKey.to_line()``.
    genesis_key: str
    enrolled_ns: int


@dataclass(frozen=True)
class Head:
    host: str
    #: Records 0 .. size-1 are stored.
    size: int
    #: Chain state JSON after record size-1 (None before the first append).
    state: str | None
    #: Record hash of record size-1 (None before the first append).
    last_hash: bytes | None
    #: The last accepted checkpoint JSON (None before the first seal).
    checkpoint: str | None
    last_seal_ns: int | None
    #: When the host last sent anything (``append`` or ``touch``).
    last_receive_ns: int | None
    status: Status
    detail: str
    updated_ns: int
    #: Quarantined entries dropped (oldest first) to keep the host's quarantine bounded.
    quarantine_dropped: int


@dataclass(frozen=True)
class QuarantineEntry:
    id: int
    received_ns: int
    reason: str
    #: Length of the body as received; ``body`` is cut to the host's quarantine limit.
    size: int
    body: bytes


class Store(Closing, ABC):
    """What the collector needs of a store. All methods may be called from several threads;
    every write is durable when the method returns."""

    #: Rejected bytes kept per host at most (``quarantine``).
    quarantine_limit: int

    # ------------------------------------------------------------------------------ hosts
    @abstractmethod
    def enroll(
        self,
        host: str,
        cert_fingerprint: str,
        genesis_key: str,
        now_ns: int,
        *,
        replace: bool = False,
    ) -> None:
        """Bind host name, certificate fingerprint and genesis key (a ``PublicKey`` line).

        The same binding again: nothing happens. Another certificate or key for an enrolled
        host: ``EnrollmentConflict`` unless ``replace``; then a new certificate for the same key
        rebinds the host (its records stay), and a new genesis key starts a new journal for the
        name: the old binding is retired with its records (kept, no longer served by name).
        A certificate already bound to another host: always ``EnrollmentConflict``.
        """

    @abstractmethod
    def host(self, name: str) -> Host | None: ...

    @abstractmethod
    def host_by_fingerprint(self, fingerprint: str) -> Host | None: ...

    @abstractmethod
    def hosts(self) -> list[Host]:
        """Every enrolled host, by name."""

    # ------------------------------------------------------------------------------ head
    @abstractmethod
    def head(self, host: str) -> Head:
        """The host's head; ``UnknownHost`` if it is not enrolled."""

    @abstractmethod
    def append(
        self,
        host: str,
        expected_size: int,
        lines: Sequence[bytes],
        hashes: Sequence[bytes],
        state_json: str,
        checkpoint_json: str | None,
        last_seal_ns: int | None,
        now_ns: int,
        *,
        fleet_entry: tuple[int, bytes] | None = None,
    ) -> bool:
        """Store records ``expected_size`` .. ``expected_size + len(lines) - 1`` and advance the
        head, in one transaction, only if the head's size is still ``expected_size``.

        Returns False (nothing written) if it is not: another writer advanced the host first.
        ``lines[i]`` is stored byte for byte with ``hashes[i]`` (32 bytes, its record hash).
        ``checkpoint_json``/``last_seal_ns`` None keep the previous ones. Sets the last receive
        time. Durable when it returns True. The status is not changed (``set_status``).
        ``fleet_entry`` (the host size it covers, its bytes) joins the fleet log in the same
        transaction.
        """

    @abstractmethod
    def set_status(self, host: str, status: Status, detail: str, now_ns: int) -> None: ...

    @abstractmethod
    def touch(self, host: str, now_ns: int) -> None:
        """The host was heard from (a head request, a rejected batch)."""

    # ------------------------------------------------------------------------------ records
    @abstractmethod
    def records(self, host: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(seq, line) for the stored records start <= seq < end, in order, read in bounded
        chunks (never all at once). Covers what was stored when it was called."""

    @abstractmethod
    def record_hashes(self, host: str, start: int, end: int) -> Iterator[bytes]:
        """The record hashes of start <= seq < end, in order, in bounded chunks."""

    # ------------------------------------------------------------------------------ fleet log
    # The collector's fleet log (agent.collector.fleet): entries are added by ``append``'s
    # ``fleet_entry`` (host size, entry bytes) in the transaction that accepts the batch.
    @abstractmethod
    def fleet_size(self) -> int:
        """Entries in the fleet log."""

    @abstractmethod
    def fleet_entries(self, start: int, end: int) -> Iterator[bytes]:
        """The entries start <= idx < end, in order, read in bounded chunks."""

    @abstractmethod
    def fleet_find(self, host: str, seq: int, below: int) -> tuple[int, bytes] | None:
        """(idx, entry) of the host's first checkpoint covering record ``seq``, idx < below."""

    @abstractmethod
    def fleet_last_of(self, host: str, below: int) -> tuple[int, int] | None:
        """(idx, host size) of the host's last entry with idx < below."""

    @abstractmethod
    def fleet_publish(self, size: int, note: bytes, now_ns: int) -> None:
        """Keep ``note`` as the published (witnessed) fleet checkpoint of ``size``."""

    @abstractmethod
    def fleet_published(self) -> tuple[int, bytes] | None:
        """(size, note) of the largest published fleet checkpoint."""

    # ------------------------------------------------------------------------------ quarantine
    @abstractmethod
    def quarantine(self, host: str, reason: str, body: bytes, now_ns: int) -> int:
        """Keep rejected data aside (never merged into the records); returns its id. The host's
        quarantine stays within ``quarantine_limit`` bytes: the oldest entries are dropped and
        counted in the head's ``quarantine_dropped``."""

    @abstractmethod
    def quarantined(self, host: str) -> list[QuarantineEntry]:
        """The host's quarantined entries, oldest first."""

    # ------------------------------------------------------------------------------ life
    @abstractmethod
    def close(self) -> None: ...

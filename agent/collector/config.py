"""``collector.toml``: the collector's configuration (read and checked by ``agent.tomlconfig``).

A ``CollectorConfig`` cannot be invalid: every value is checked when it is made, from the file or
from a command-line override (``override``). Errors name the file, the line and the key
(``[timeouts] request_seconds``), never a traceback.
Relative paths (files, a bare store path) are relative to the collector directory.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.collector import layout
from agent.collector.errors import CollectorError, ConfigError
from agent.collector.names import check_host_name
from agent.collector.store import DEFAULT_QUARANTINE_LIMIT
from agent.collector.store.url import check_store_url
from agent.tomlconfig import (
    FieldError,
    field_names,
    integer,
    num,
    number,
    parse,
    quote,
    string,
    table,
)

DEFAULT_LISTEN = "0.0.0.0:8443"
_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})")


@dataclass(frozen=True)
class Timeouts:
    #: TLS handshake, from accept to a verified client certificate.
    handshake_seconds: float = 10.0
    #: One whole request, headers and body, against clients that trickle bytes.
    request_seconds: float = 30.0
    #: An idle keep-alive connection is closed after this.
    idle_seconds: float = 75.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = number(f"timeouts.{f.name}", getattr(self, f.name), 0.001)
            object.__setattr__(self, f.name, value)


@dataclass(frozen=True)
class Files:
    """Certificate and key files; relative names are relative to the collector directory."""

    ca_cert: str = layout.CA_CERT
    #: Only ``collector enroll`` reads the CA key; the server never does. None: the operator's
    #: CA signs client certificates itself (``enroll --cert``).
    ca_key: str | None = layout.CA_KEY
    server_cert: str = layout.SERVER_CERT
    server_key: str = layout.SERVER_KEY
    signing_key: str = layout.SIGNING_KEY
    signing_pub: str = layout.SIGNING_PUB

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "ca_key" or self.ca_key is not None:
                string(f"files.{f.name}", getattr(self, f.name))


@dataclass(frozen=True)
class CollectorConfig:
    """One collector's settings; ``directory`` is where ``collector.toml`` lives."""

    directory: Path
    name: str
    listen: str = DEFAULT_LISTEN
    #: ``postgresql://...``, ``sqlite:///ABS/PATH``, or a path (relative: to ``directory``).
    store: str = layout.STORE
    #: The agent seals at least this often; a host with no new seal for
    #: ``heartbeat_seconds * silent_after`` is silent.
    heartbeat_seconds: float = 10.0
    silent_after: int = 3
    body_limit: int = 16 << 20
    #: Rejected batches kept per host for forensics; the oldest go first.
    quarantine_limit: int = DEFAULT_QUARANTINE_LIMIT
    timeouts: Timeouts = field(default_factory=Timeouts)
    files: Files = field(default_factory=Files)

    def __post_init__(self) -> None:
        try:
            check_host_name(self.name)
        except CollectorError as exc:
            raise FieldError("name", str(exc)) from None
        self.listen_address()
        try:
            check_store_url(string("store", self.store))
        except CollectorError as exc:
            raise FieldError("store", str(exc)) from None
        object.__setattr__(
            self, "heartbeat_seconds", number("heartbeat.seconds", self.heartbeat_seconds, 0.1)
        )
        integer("heartbeat.silent_after", self.silent_after, 1)
        integer("limits.body_bytes", self.body_limit, 1024)
        integer("limits.quarantine_bytes_per_host", self.quarantine_limit, 0)

    # ------------------------------------------------------------------------------ views
    def listen_address(self) -> tuple[str, int]:
        match = _LISTEN.fullmatch(string("listen", self.listen))
        port = int(match["port"]) if match else 0
        if match is None or not 1 <= port <= 65535:
            raise FieldError(
                "listen",
                f"must be HOST:PORT or [IPV6]:PORT with a port 1-65535, not {self.listen!r}",
            )
        return (match["v6"] or match["host"], port)

    @property
    def silent_seconds(self) -> float:
        return self.heartbeat_seconds * self.silent_after

    def path(self, name: str) -> Path:
        """A configured file name as a path: absolute as given, else under ``directory``."""
        return self.directory / Path(name).expanduser()

    def store_url(self) -> str:
        """The store as ``open_store`` takes it: a bare relative path made absolute."""
        if "://" in self.store:
            return self.store
        return str(self.path(self.store))

    def override(self, **changes: Any) -> CollectorConfig:
        """The same configuration with command-line values; a bad one names its option."""
        try:
            return dataclasses.replace(self, **changes)
        except FieldError as exc:
            raise ConfigError(f"{exc.key}: {exc.message}") from None

    # ------------------------------------------------------------------------------ serial
    def to_toml(self) -> str:
        t, f = self.timeouts, self.files
        lines = [
            "# sealtrail collector configuration; every key is described in docs/collector.md",
            f"name = {quote(self.name)}",
            f"listen = {quote(self.listen)}",
            f"store = {quote(self.store)}",
            "",
            "[heartbeat]",
            f"seconds = {num(self.heartbeat_seconds)}",
            f"silent_after = {self.silent_after}",
            "",
            "[limits]",
            f"body_bytes = {self.body_limit}",
            f"quarantine_bytes_per_host = {self.quarantine_limit}",
            "",
            "[timeouts]",
            *(f"{x.name} = {num(getattr(t, x.name))}" for x in dataclasses.fields(t)),
            "",
            "[files]",
            *(
                f"{x.name} = {quote(getattr(f, x.name))}"
                for x in dataclasses.fields(f)
                if getattr(f, x.name) is not None
            ),
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, directory: Path, data: Mapping[str, Any]) -> CollectorConfig:
        """Every key known, none missing but those with defaults; raises ``FieldError``."""
        top = table(
            data, "", {"name", "listen", "store", "heartbeat", "limits", "timeouts", "files"}
        )
        heartbeat = table(top.get("heartbeat", {}), "heartbeat", {"seconds", "silent_after"})
        limits = table(top.get("limits", {}), "limits", {"body_bytes", "quarantine_bytes_per_host"})
        timeouts = table(top.get("timeouts", {}), "timeouts", field_names(Timeouts))
        files = table(top.get("files", {}), "files", field_names(Files))
        files.setdefault("ca_key", None if "ca_cert" in files else layout.CA_KEY)
        if "name" not in top:
            raise FieldError("name", "is missing (the collector's name)")
        defaults = cls(directory=directory, name=top["name"])
        return cls(
            directory=directory,
            name=top["name"],
            listen=top.get("listen", defaults.listen),
            store=top.get("store", defaults.store),
            heartbeat_seconds=heartbeat.get("seconds", defaults.heartbeat_seconds),
            silent_after=heartbeat.get("silent_after", defaults.silent_after),
            body_limit=limits.get("body_bytes", defaults.body_limit),
            quarantine_limit=limits.get("quarantine_bytes_per_host", defaults.quarantine_limit),
            timeouts=Timeouts(**timeouts),
            files=Files(**files),
        )


def load_config(directory: Path) -> CollectorConfig:
    """``DIR/collector.toml``, or a ``ConfigError`` naming file, line and key."""
    path = directory / layout.CONFIG
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist: is {directory} a collector directory? "
            f"(sealtrail collector init --dir {directory})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse(path, raw, lambda data: CollectorConfig.from_toml(directory, data), ConfigError)


def make_config(directory: Path, name: str, **values: Any) -> CollectorConfig:
    """A new configuration (``collector init``), checked like one read from a file."""
    try:
        return CollectorConfig(directory=directory, name=name, **values)
    except FieldError as exc:
        raise ConfigError(f"{exc.key}: {exc.message}") from None

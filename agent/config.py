"""``agent.toml``: the agent's configuration file, under its command line.

``sealtrail agent`` reads ``/etc/sealtrail/agent.toml`` (``paths.DEFAULT_AGENT_CONFIG``) if it
exists, or the file ``--config FILE`` names, which must exist. Every option of the agent has a
key in the file (``FLAGS``); what the command line gives wins over the file, the file over the
defaults. An ``AgentSettings`` cannot be invalid: every value is checked when it is made, from
the file (errors name the file, the line and the key: ``agent.tomlconfig``) or from the command
line (``override``: errors name the flag). The file is checked whole before any flag applies.
Relative paths in the file are relative to its directory. The keys with their defaults:
docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import paths, tomlconfig
from agent.daemon import DEFAULT_RECORD_KINDS
from agent.errors import ConfigError, ForwardError, UsageError
from agent.events.stream import DEFAULT_RINGBUF_BYTES, StreamConfig
from agent.forward.client import Endpoint
from agent.forward.forwarder import ForwardConfig
from agent.forward.pacing import DEFAULT_RATE, DEFAULT_STOP_WAIT, Pacing
from agent.journal.writer import DEFAULT_EPOCH_SECONDS, DEFAULT_HEARTBEAT
from agent.kernel.pins import DEFAULT_PIN_DIR
from agent.metrics import MetricsAddress
from agent.tomlconfig import FieldError

#: Every key of agent.toml and the flag of ``sealtrail agent`` that overrides it.
FLAGS = {
    "policies": "--policies",
    "journal": "--journal",
    "keys": "--keys",
    "run_dir": "--run-dir",
    "cgroup": "--cgroup",
    "record": "--record",
    "ringbuf_size": "--ringbuf-size",
    "epoch_seconds": "--epoch-seconds",
    "heartbeat_seconds": "--heartbeat",
    "pin_dir": "--pin-dir",
    "pin": "--no-pin",
    "metrics": "--metrics",
    "metrics_remote": "--metrics-remote",
    "forward.url": "--forward",
    "forward.tls": "--forward-tls",
    "forward.wait_seconds": "--forward-wait",
    "forward.rate": "--forward-rate",
}
_PATHS = ("policies", "journal", "keys", "run_dir", "cgroup", "pin_dir")


def _path(key: str, value: object) -> Path:
    if not isinstance(value, Path) or not str(value).isprintable():
        raise FieldError(key, f"must be a path, not {value!r}")
    return value


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # a checked value into a frozen dataclass


@dataclass(frozen=True)
class ForwardSettings:
    """``[forward]``: the collector the journal goes to (``url`` and ``tls`` together, or
    neither: no forwarding) and how it goes."""

    url: str | None = None
    #: The enrollment bundle (``sealtrail collector enroll --out``).
    tls: Path | None = None
    wait_seconds: float = DEFAULT_STOP_WAIT
    rate: int = DEFAULT_RATE

    def __post_init__(self) -> None:
        if self.url is not None:
            try:
                Endpoint.parse(tomlconfig.string("forward.url", self.url))
            except ForwardError as exc:
                raise FieldError("forward.url", str(exc)) from None
        if self.tls is not None:
            _path("forward.tls", self.tls)
        if self.url is not None and self.tls is None:
            raise FieldError(
                "forward.url", "needs the enrollment bundle too ([forward] tls, --forward-tls DIR)"
            )
        if self.tls is not None and self.url is None:
            raise FieldError(
                "forward.tls", "needs the collector's address too ([forward] url, --forward URL)"
            )
        _set(self, "wait_seconds", tomlconfig.number("forward.wait_seconds", self.wait_seconds, 0))
        tomlconfig.integer("forward.rate", self.rate, 0)

    def config(self) -> ForwardConfig | None:
        if self.url is None or self.tls is None:
            return None
        return ForwardConfig(
            self.url, self.tls, Pacing(rate=self.rate, stop_wait=self.wait_seconds)
        )


@dataclass(frozen=True)
class AgentSettings:
    """What ``sealtrail agent`` runs with: the defaults, then the file, then the flags."""

    policies: Path = paths.DEFAULT_POLICIES_DIR
    journal: Path = paths.DEFAULT_JOURNAL_DIR
    keys: Path = paths.DEFAULT_KEYS_DIR
    run_dir: Path = paths.DEFAULT_RUN_DIR
    #: The cgroup v2 directory the network guard attaches to; None: the root (the whole host).
    cgroup: Path | None = None
    #: Event kinds journaled besides those the policies target.
    record: frozenset[str] = DEFAULT_RECORD_KINDS
    ringbuf_size: int = DEFAULT_RINGBUF_BYTES
    #: A signing key's lifetime before forward-secure rotation.
    epoch_seconds: float = DEFAULT_EPOCH_SECONDS
    #: The journal is sealed at least this often, idle or not.
    heartbeat_seconds: float = DEFAULT_HEARTBEAT
    #: Where the in-kernel guard and the ring buffer are pinned (docs/restarts.md).
    pin_dir: Path = DEFAULT_PIN_DIR
    #: Pin them at all; false: the in-kernel guard ends with the agent.
    pin: bool = True
    #: The Prometheus endpoint, ``HOST:PORT``; None: none (docs/metrics.md).
    metrics: str | None = None
    #: Let ``metrics`` be a non-loopback address (the endpoint has no authentication).
    metrics_remote: bool = False
    forward: ForwardSettings = field(default_factory=ForwardSettings)

    def __post_init__(self) -> None:
        for name in _PATHS:
            if name != "cgroup" or self.cgroup is not None:
                _path(name, getattr(self, name))
        _event_kinds(self.record, frozenset)
        _stream_check("record", kinds=self.record)
        _stream_check(
            "ringbuf_size", ringbuf_bytes=tomlconfig.integer("ringbuf_size", self.ringbuf_size, 0)
        )
        _set(self, "epoch_seconds", tomlconfig.number("epoch_seconds", self.epoch_seconds, 0.001))
        _set(
            self,
            "heartbeat_seconds",
            tomlconfig.number("heartbeat_seconds", self.heartbeat_seconds, 0.001),
        )
        for name in ("pin", "metrics_remote"):
            if not isinstance(getattr(self, name), bool):
                raise FieldError(name, f"must be true or false, not {getattr(self, name)!r}")
        self.metrics_address()
        if not isinstance(self.forward, ForwardSettings):
            raise FieldError("forward", "must be a table")

    def override(self, flags: Mapping[str, Any]) -> AgentSettings:
        """These settings with the values given on the command line, by key (``FLAGS``); a
        bad one, or one that does not go with the rest, names its flag."""
        top = {k: v for k, v in flags.items() if not k.startswith("forward.")}
        fwd = {k.removeprefix("forward."): v for k, v in flags.items() if k.startswith("forward.")}
        try:
            return dataclasses.replace(
                self, **top, forward=dataclasses.replace(self.forward, **fwd)
            )
        except FieldError as exc:
            raise UsageError(f"{FLAGS.get(exc.key, exc.key)}: {exc.message}") from None

    def metrics_address(self) -> MetricsAddress | None:
        """Where the metrics endpoint listens (None: it is off); checked when made."""
        if self.metrics is None:
            return None
        try:
            text = tomlconfig.string("metrics", self.metrics)
            return MetricsAddress.parse(text, remote=self.metrics_remote)
        except UsageError as exc:
            raise FieldError("metrics", str(exc)) from None

    # ------------------------------------------------------------------------------ serial
    def to_toml(self) -> str:
        """The file that gives exactly these settings (``from_toml`` reads it back equal)."""
        f = self.forward
        lines = [
            "# sealtrail agent configuration; every key is described in docs/configuration.md",
            *(_optional(name, getattr(self, name)) for name in _PATHS),
            f"record = [{', '.join(tomlconfig.quote(kind) for kind in sorted(self.record))}]",
            f"ringbuf_size = {self.ringbuf_size}",
            f"epoch_seconds = {tomlconfig.num(self.epoch_seconds)}",
            f"heartbeat_seconds = {tomlconfig.num(self.heartbeat_seconds)}",
            f"pin = {'true' if self.pin else 'false'}",
            _optional("metrics", self.metrics),
            f"metrics_remote = {'true' if self.metrics_remote else 'false'}",
            "",
            "[forward]",
            _optional("url", f.url),
            _optional("tls", f.tls),
            f"wait_seconds = {tomlconfig.num(f.wait_seconds)}",
            f"rate = {f.rate}",
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, data: Mapping[str, Any], base: Path) -> AgentSettings:
        """Every key known, each checked; relative paths under ``base``. Raises ``FieldError``."""
        values = dict(tomlconfig.table(data, "", tomlconfig.field_names(cls)))
        forward = dict(
            tomlconfig.table(
                values.pop("forward", {}), "forward", tomlconfig.field_names(ForwardSettings)
            )
        )
        for name in _PATHS:
            if name in values:
                values[name] = _file_path(name, values[name], base)
        if "tls" in forward:
            forward["tls"] = _file_path("forward.tls", forward["tls"], base)
        if "record" in values:
            values["record"] = frozenset(_event_kinds(values["record"], list))
        return cls(**values, forward=ForwardSettings(**forward))


def load_settings(path: Path | None) -> AgentSettings:
    """The settings of ``path`` (``--config``: it must exist), else of the default file if
    there is one, else the defaults; a ``ConfigError`` naming file, line and key."""
    file = paths.DEFAULT_AGENT_CONFIG if path is None else path
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if path is not None:
            raise ConfigError(f"{file} does not exist (--config FILE)") from None
        return AgentSettings()
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    base = file.absolute().parent
    return tomlconfig.parse(
        file, raw, lambda data: AgentSettings.from_toml(data, base), ConfigError
    )


# ------------------------------------------------------------------------------ helpers
_ABSENT = {
    "cgroup": "not set, the cgroup v2 root (the whole host)",
    "metrics": "not set, no metrics endpoint (docs/metrics.md)",
    "url": "not set, no forwarding",
    "tls": "not set (the enrollment bundle directory, with url)",
}


def _event_kinds(value: object, container: type[list[str] | frozenset[str]]) -> Any:
    if not isinstance(value, container) or not all(
        isinstance(k, str) and k.isprintable() for k in value
    ):
        raise FieldError("record", f"must be a list of event kinds, not {value!r}")
    return value


def _stream_check(key: str, **values: Any) -> None:
    """The event stream's own check of a value (one rule, defined there)."""
    try:
        StreamConfig(**values)
    except UsageError as exc:
        raise FieldError(key, str(exc)) from None


def _file_path(key: str, value: object, base: Path) -> Path:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise FieldError(key, f"must be a path (a non-empty string), not {value!r}")
    return base / value


def _optional(key: str, value: object) -> str:
    """``key = "value"``, or a comment saying what its absence means."""
    return (
        f"{key} = {tomlconfig.quote(str(value))}"
        if value is not None
        else f"# {key}: {_ABSENT[key]}"
    )

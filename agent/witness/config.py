"""The witness directory and its ``witness.toml``.

::

    witness.toml   name, listen address, and one [[log]] table per witnessed log (its vkey)
    witness.key    the cosigning key (0600), sumdb/note private key format
    witness.vkey   its cosignature/v1 verifier key, for the logs' policy files
    state.sqlite   the latest cosigned checkpoint of each log, and conflicting ones kept
    cosigned.log   the high-water file: one line per cosignature (rollback protection)

::

    name = "witness.example/w1"
    listen = "127.0.0.1:7380"
    # state = "state.sqlite"; highwater = "cosigned.log" (relative to the directory)

    [[log]]
    vkey = "collector.example/fleet+1a2b3c4d+AR..."
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import tomlconfig
from agent.c2sp.keys import COSIGNATURE_V1, ED25519, NoteError, Signer, VerifierKey, check_name
from agent.collector.keyfiles import read_private, write_private, write_public
from agent.errors import SealtrailError
from agent.witness.errors import WitnessError

CONFIG = "witness.toml"
KEY = "witness.key"
VKEY = "witness.vkey"
STATE = "state.sqlite"
HIGHWATER = "cosigned.log"
_KNOWN = {"name", "listen", "state", "highwater", "log"}


@dataclass(frozen=True)
class WitnessConfig:
    directory: Path
    name: str
    listen: str
    logs: dict[str, VerifierKey]  # origin -> the log's key (its name is the origin)
    state: str = STATE
    highwater: str = HIGHWATER

    def path(self, name: str) -> Path:
        return self.directory / name

    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def signer(self) -> Signer:
        path = self.path(KEY)
        try:
            signer = Signer.from_private_text(read_private(path).decode("ascii"), COSIGNATURE_V1)
        except (SealtrailError, UnicodeDecodeError) as exc:
            raise WitnessError(f"{path}: {exc}") from None
        if signer.name != self.name:
            raise WitnessError(f"{path} is the key of {signer.name!r}, not of {self.name!r}")
        return signer


def _build(directory: Path, doc: dict[str, Any]) -> WitnessConfig:
    tomlconfig.table(doc, "", _KNOWN)
    name = tomlconfig.string("name", doc.get("name"))
    try:
        check_name(name, "witness name")
    except NoteError as exc:
        raise tomlconfig.FieldError("name", str(exc)) from None
    listen = tomlconfig.string("listen", doc.get("listen", "127.0.0.1:7380"))
    _, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise tomlconfig.FieldError("listen", f"must be HOST:PORT, not {listen!r}")
    tables = doc.get("log", [])
    if not isinstance(tables, list):
        raise tomlconfig.FieldError("log", "must be an array of tables ([[log]])")
    logs: dict[str, VerifierKey] = {}
    for i, entry in enumerate(tables):
        tomlconfig.table(entry, f"log.{i}", {"vkey"})
        text = tomlconfig.string(f"log.{i}.vkey", entry.get("vkey"))
        try:
            key = VerifierKey.from_text(text)
        except NoteError as exc:
            raise tomlconfig.FieldError(f"log.{i}.vkey", str(exc)) from None
        if key.sig_type != ED25519:
            raise tomlconfig.FieldError(f"log.{i}.vkey", "a log key is an Ed25519 note key (0x01)")
        if key.name in logs:
            raise tomlconfig.FieldError(f"log.{i}.vkey", f"log {key.name} is listed twice")
        logs[key.name] = key
    state = tomlconfig.string("state", doc.get("state", STATE))
    highwater = tomlconfig.string("highwater", doc.get("highwater", HIGHWATER))
    return WitnessConfig(directory, name, listen, logs, state, highwater)


def load(directory: Path) -> WitnessConfig:
    path = directory / CONFIG
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WitnessError(f"cannot read {path}: {exc.strerror} (run witness init)") from None
    return tomlconfig.parse(path, raw, lambda doc: _build(directory, doc), WitnessError)


def init(directory: Path, name: str, listen: str, logs: list[str]) -> WitnessConfig:
    """A new witness directory (0700): key, vkey and configuration; refuses to overwrite."""
    check_name(name, "witness name")
    keys = [VerifierKey.from_text(text) for text in logs]
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise WitnessError(f"cannot create {directory}: {exc.strerror}") from None
    if (directory / CONFIG).exists():
        raise WitnessError(f"{directory / CONFIG} exists: a witness is never initialised twice")
    signer = Signer.generate(name, COSIGNATURE_V1)
    write_private(directory / KEY, signer.private_text().encode("ascii"))
    write_public(directory / VKEY, (signer.verifier.to_text() + "\n").encode("ascii"))
    lines = [
        f"name = {tomlconfig.quote(name)}",
        f"listen = {tomlconfig.quote(listen)}",
        *(f"\n[[log]]\nvkey = {tomlconfig.quote(k.to_text())}" for k in keys),
    ]
    write_private(directory / CONFIG, ("\n".join(lines) + "\n").encode("utf-8"))
    return load(directory)

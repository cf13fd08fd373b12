"""``collector init`` and ``collector enroll`` as library calls (the CLI only parses flags).

Both check everything they can before they write anything, and refuse to overwrite a file, so a
failed run leaves nothing half-made behind it (or names the files in the way).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.collector import layout, pki
from agent.collector.config import CollectorConfig, Files, load_config, make_config
from agent.collector.errors import ConfigError, PkiError
from agent.collector.keyfiles import read_public, write_private, write_public
from agent.collector.names import check_host_name
from agent.collector.signing import create_signing_key
from agent.collector.store import open_store
from agent.errors import FormatError
from agent.journal.keys import PUBLIC_TAG, PublicKey


@dataclass(frozen=True)
class Initialised:
    config: CollectorConfig
    ca_fingerprint: str
    server_fingerprint: str
    server_names: tuple[str, ...]
    signing_key_id: str


@dataclass(frozen=True)
class Enrolled:
    host: str
    fingerprint: str
    journal_key_id: str
    out: Path
    files: tuple[Path, ...]


def init_collector(
    directory: Path,
    *,
    name: str | None = None,
    sans: list[str] | None = None,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    server_cert: Path | None = None,
    server_key: Path | None = None,
    store: str | None = None,
    listen: str | None = None,
    days: int = pki.CERT_DAYS,
) -> Initialised:
    """A new collector directory: CA (or the operator's), server certificate (or one the
    operator's CA issued), receipt key, store (created and migrated) and ``collector.toml``,
    written last. The operator's files stay where they are; ``collector.toml`` names them."""
    _check_sources(ca_cert, ca_key, server_cert, server_key, sans)
    directory = Path(directory).absolute()
    name = check_host_name(name if name is not None else socket.gethostname().split(".")[0])
    files = Files(
        ca_cert=str(ca_cert.absolute()) if ca_cert else layout.CA_CERT,
        ca_key=str(ca_key.absolute()) if ca_key else None if ca_cert else layout.CA_KEY,
        server_cert=str(server_cert.absolute()) if server_cert else layout.SERVER_CERT,
        server_key=str(server_key.absolute()) if server_key else layout.SERVER_KEY,
    )
    values: dict[str, object] = {"files": files}
    if listen is not None:
        values["listen"] = listen
    if store is not None:  # a bare path on the command line is relative to the current directory
        values["store"] = store if "://" in store else str(Path(store).absolute())
    config = make_config(directory, name, **values)
    names = sans if sans else pki.default_sans()
    for san in names:
        pki.parse_san(san)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory")
    ours = [directory / layout.CONFIG]
    if ca_cert is None:
        ours += [directory / layout.CA_CERT, directory / layout.CA_KEY]
    if server_cert is None:
        ours += [directory / layout.SERVER_CERT, directory / layout.SERVER_KEY]
    ours += [directory / layout.SIGNING_KEY, directory / layout.SIGNING_PUB]
    _refuse_existing(ours, f"{directory} is already (partly) a collector directory")

    authority: pki.Authority | None
    if ca_cert is None:
        authority = pki.create_ca(name)
        trust = authority.cert
    elif ca_key is not None:
        authority = pki.load_authority(ca_cert, ca_key)
        trust = authority.cert
    else:
        authority, trust = None, pki.load_certificate(ca_cert)
    new_server_key = None
    if server_cert and server_key:
        server = pki.load_certificate(server_cert)
        pki.check_key_pair(server, pki.load_private_key(server_key))
        pki.check_issued(server, trust, ExtendedKeyUsageOID.SERVER_AUTH)
        names = pki.subject_alt_names(server)
    else:
        assert authority is not None, "_check_sources: no CA key means --server-cert"
        new_server_key = pki.new_key()
        server = pki.issue_server(authority, new_server_key.public_key(), name, names, days=days)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open_store(config.store_url(), quarantine_limit=config.quarantine_limit):
        pass  # created and migrated now, so a wrong URL fails here, before any key is written
    if ca_cert is None and authority is not None:
        pki.write_key(directory / layout.CA_KEY, authority.key)
        pki.write_cert(directory / layout.CA_CERT, authority.cert)
    if new_server_key is not None:
        pki.write_key(directory / layout.SERVER_KEY, new_server_key)
        pki.write_cert(directory / layout.SERVER_CERT, server)
    signing = create_signing_key(directory / layout.SIGNING_KEY, directory / layout.SIGNING_PUB)
    # 0600: a store URL may carry a password
    write_private(directory / layout.CONFIG, config.to_toml().encode("utf-8"))
    return Initialised(
        config=config,
        ca_fingerprint=pki.fingerprint(trust),
        server_fingerprint=pki.fingerprint(server),
        server_names=tuple(names),
        signing_key_id=signing.key_id,
    )


def _check_sources(
    ca_cert: Path | None,
    ca_key: Path | None,
    server_cert: Path | None,
    server_key: Path | None,
    sans: list[str] | None,
) -> None:
    if ca_key and not ca_cert:
        raise PkiError("--ca-key needs --ca-cert, the CA certificate it belongs to")
    if (server_cert is None) != (server_key is None):
        raise PkiError("--server-cert and --server-key go together")
    if ca_cert and not ca_key and not server_cert:
        raise PkiError(
            "without --ca-key the collector cannot issue its server certificate: give "
            "--server-cert and --server-key issued by that CA, or the CA key"
        )
    if server_cert and not ca_cert:
        raise PkiError("--server-cert needs --ca-cert, the CA that issued it (hosts trust that CA)")
    if server_cert and sans:
        raise PkiError(
            "--san names the server certificate the collector issues; --server-cert "
            "brings its own names"
        )


def enroll_host(
    directory: Path,
    host: str,
    journal_key: str,
    out: Path,
    *,
    csr: Path | None = None,
    cert: Path | None = None,
    ca_key: Path | None = None,
    store: str | None = None,
    replace: bool = False,
    days: int = pki.CERT_DAYS,
) -> Enrolled:
    """Bind ``host`` to a client certificate and its genesis journal key, and write the bundle
    the host's agent forwards with (``layout``): a new key and certificate, a certificate for
    the host's own request (``csr``), or a certificate issued elsewhere (``cert``)."""
    if csr is not None and cert is not None:
        raise PkiError("--csr and --cert exclude each other: sign a request, or bind a certificate")
    config = load_config(Path(directory).absolute())
    if store is not None:
        config = config.override(store=store if "://" in store else str(Path(store).absolute()))
    check_host_name(host)
    genesis = _journal_key(journal_key)
    out = Path(out).absolute()
    issue_key = csr is None and cert is None
    targets = [out / layout.CLIENT_CERT, out / layout.BUNDLE_CA, out / layout.BUNDLE_PUB]
    if issue_key:
        targets.append(out / layout.CLIENT_KEY)
    _refuse_existing(targets, f"{out} already holds an enrollment")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    ca_cert_path = config.path(config.files.ca_cert)
    ca_pem = read_public(ca_cert_path)
    pub_line = read_public(config.path(config.files.signing_pub))
    PublicKey.from_line(pub_line.decode("ascii", "replace"))  # a broken collector.pub fails now
    client_key = None
    if cert is not None:
        certificate = pki.load_certificate(cert)
        pki.check_client_certificate(certificate, pki.load_certificate(ca_cert_path), host)
    else:
        key_path = ca_key or (config.files.ca_key and config.path(config.files.ca_key))
        if not key_path:
            raise PkiError(
                "the collector has no CA key ([files] ca_key in collector.toml): bind a "
                "certificate your CA issued with --cert, or give the CA key with --ca-key"
            )
        authority = pki.load_authority(ca_cert_path, key_path)
        if csr is not None:
            public = pki.csr_public_key(pki.load_csr(csr), host)
        else:
            client_key = pki.new_key()
            public = client_key.public_key()
        certificate = pki.issue_client(authority, public, host, days=days)
    fp = pki.fingerprint(certificate)
    with open_store(config.store_url(), quarantine_limit=config.quarantine_limit) as opened:
        opened.enroll(host, fp, genesis.to_line(), time.time_ns(), replace=replace)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki.write_cert(out / layout.CLIENT_CERT, certificate)
    if client_key is not None:
        pki.write_key(out / layout.CLIENT_KEY, client_key)
    write_public(out / layout.BUNDLE_CA, ca_pem)
    write_public(out / layout.BUNDLE_PUB, pub_line)
    return Enrolled(host, fp, genesis.key_id, out, tuple(p for p in targets if p.exists()))


def _journal_key(text: str) -> PublicKey:
    """``--journal-key``: the host's ``journal.pub``, or its one line as ``keys init`` prints it."""
    if text.startswith(PUBLIC_TAG + " "):
        try:
            return PublicKey.from_line(text)
        except FormatError as exc:
            raise PkiError(f"--journal-key: {exc}") from None
    return PublicKey.load(Path(text))


def _refuse_existing(paths: list[Path], what: str) -> None:
    present = [p.name for p in paths if p.exists() or p.is_symlink()]
    if present:
        raise ConfigError(f"{what} ({', '.join(present)}); nothing was overwritten")

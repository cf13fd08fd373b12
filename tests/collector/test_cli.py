"""``sealtrail collector init`` and ``enroll``, run as a user runs them, on both stores, and the
openssl commands of docs/collector.md for fleets with a CA of their own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.cli import main
from agent.collector import pki
from agent.collector.config import load_config
from agent.collector.signing import load_signing_key
from agent.collector.store import open_store
from agent.journal.keys import KeyStore, PublicKey
from tests.collector import tls

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["collector", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def journal_pub(tmp_path: Path) -> Path:
    KeyStore(tmp_path / "keys").init()
    return tmp_path / "keys" / "journal.pub"


def test_init_makes_a_complete_collector_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    coll = tmp_path / "coll"
    rc, out, _ = run(capsys, "init", "--dir", coll, "--name", "coll-1", "--store", store_url)
    assert rc == 0 and "collector coll-1 initialised" in out
    assert mode(coll) == 0o700
    for name, want in [
        ("collector.toml", 0o600),
        ("ca.crt", 0o644),
        ("ca.key", 0o600),
        ("server.crt", 0o644),
        ("server.key", 0o600),
        ("collector.key", 0o600),
        ("collector.pub", 0o644),
    ]:
        assert mode(coll / name) == want, name
    config = load_config(coll)
    assert (config.name, config.store_url()) == ("coll-1", store_url)
    # the receipt key: collector.pub is a journal public key line, matching collector.key
    public = PublicKey.load(coll / "collector.pub")
    assert load_signing_key(coll / "collector.key").public == public
    ca = pki.load_certificate(coll / "ca.crt")
    server = pki.load_certificate(coll / "server.crt")
    pki.check_issued(server, ca, ExtendedKeyUsageOID.SERVER_AUTH)
    assert {"localhost", "127.0.0.1", "::1"} <= set(pki.subject_alt_names(server))
    with open_store(store_url) as store:
        assert store.hosts() == []


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "init", "--dir", tmp_path / "c", "--name", "c")[0] == 0
    before = (tmp_path / "c" / "ca.key").read_bytes()
    rc, _, err = run(capsys, "init", "--dir", tmp_path / "c", "--name", "c")
    assert rc == 1
    assert err.count("\n") == 1 and "already (partly) a collector directory" in err
    assert (tmp_path / "c" / "ca.key").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--san", "not a name"], "neither an IP address nor a DNS name"),
        (["--name", "bad name"], "is not usable"),
        (["--ca-key", "/x.key"], "--ca-key needs --ca-cert"),
        (["--ca-cert", "/x.crt"], "cannot issue its server certificate"),
        (["--store", "mysql://x"], "unknown scheme"),
        (["--listen", "nowhere"], "listen: must be HOST:PORT"),
        (["--store", "postgresql://u:pw@127.0.0.1:1/x"], "cannot connect to the store"),
    ],
)
def test_init_errors_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    rc, _, err = run(capsys, "init", "--dir", tmp_path / "c", *argv)
    assert rc == 1 and err.startswith("sealtrail: error: ") and err.count("\n") == 1, err
    assert message in err and "pw" not in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_enroll_writes_the_bundle_and_binds_the_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store_url: str, journal_pub: Path
) -> None:
    coll, bundle = tmp_path / "coll", tmp_path / "bundle"
    assert run(capsys, "init", "--dir", coll, "--name", "coll-1", "--store", store_url)[0] == 0
    rc, out, _ = run(
        capsys, "enroll", "--dir", coll, "--host", "web-01", "--journal-key", journal_pub,
        "--out", bundle,
    )  # fmt: skip
    assert rc == 0, out
    assert sorted(p.name for p in bundle.iterdir()) == [
        "ca.crt",
        "client.crt",
        "client.key",
        "collector.pub",
    ]
    assert (mode(bundle), mode(bundle / "client.key")) == (0o700, 0o600)
    assert (bundle / "ca.crt").read_bytes() == (coll / "ca.crt").read_bytes()
    assert PublicKey.load(bundle / "collector.pub") == PublicKey.load(coll / "collector.pub")
    cert = pki.load_certificate(bundle / "client.crt")
    with open_store(store_url) as store:
        host = store.host_by_fingerprint(pki.fingerprint(cert))
    assert host is not None and host.name == "web-01"
    assert host.genesis_key == PublicKey.load(journal_pub).to_line()
    assert pki.fingerprint(cert) in out
    # the bundle and the collector directory talk TLS 1.3, and the server sees the binding
    seen = tls.handshake(
        (coll / "server.crt", coll / "server.key"),
        coll / "ca.crt",
        (bundle / "client.crt", bundle / "client.key"),
        bundle / "ca.crt",
    )
    assert seen == host.fingerprint


def test_enroll_again_needs_replace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], journal_pub: Path
) -> None:
    coll = tmp_path / "coll"
    assert run(capsys, "init", "--dir", coll, "--name", "c")[0] == 0
    base = ["enroll", "--dir", coll, "--host", "web-01", "--journal-key", journal_pub]
    assert run(capsys, *base, "--out", tmp_path / "b1")[0] == 0
    rc, _, err = run(capsys, *base, "--out", tmp_path / "b2")
    assert rc == 1 and "pass --replace" in err and not (tmp_path / "b2").exists()
    rc, _, err = run(capsys, *base, "--out", tmp_path / "b1")
    assert rc == 1 and "already holds an enrollment" in err
    assert run(capsys, *base, "--out", tmp_path / "b3", "--replace")[0] == 0
    with open_store(str(coll / "store.sqlite")) as store:
        host = store.host("web-01")
    new = pki.load_certificate(tmp_path / "b3" / "client.crt")
    assert host is not None and host.fingerprint == pki.fingerprint(new)


def test_enroll_takes_the_key_line_and_refuses_bad_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], journal_pub: Path
) -> None:
    coll = tmp_path / "coll"
    assert run(capsys, "init", "--dir", coll, "--name", "c")[0] == 0
    line = journal_pub.read_text().strip()
    base = ["enroll", "--dir", coll, "--host", "web-01", "--out", tmp_path / "b"]
    wrong_id = line[:-1] + ("1" if line.endswith("0") else "0")  # always a different id
    rc, _, err = run(capsys, *base, "--journal-key", wrong_id)
    assert rc == 1 and "--journal-key: public key id" in err
    rc, _, err = run(capsys, *base, "--journal-key", tmp_path / "missing.pub")
    assert rc == 1 and "cannot read public key" in err
    assert run(capsys, *base, "--journal-key", line)[0] == 0
    (coll / "ca.key").chmod(0o640)
    rc, _, err = run(
        capsys, "enroll", "--dir", coll, "--host", "web-02", "--journal-key", line,
        "--out", tmp_path / "b2",
    )  # fmt: skip
    assert rc == 1 and "ca.key has mode 0640" in err and "chmod 600" in err


# ------------------------------------------------------------------------------ openssl
def openssl(*argv: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, argv)], cwd=cwd, check=True, capture_output=True)


def openssl_key_and_csr(directory: Path, stem: str, cn: str) -> None:
    """As docs/collector.md: a P-256 key (0600 via umask) and a request with CN."""
    subprocess.run(
        f"umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        f"-keyout {stem}.key -subj /CN={cn} -out {stem}.csr",
        shell=True,
        cwd=directory,
        check=True,
        capture_output=True,
    )


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")


@needs_openssl
def test_enroll_signs_a_csr_made_with_openssl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], journal_pub: Path
) -> None:
    coll, host_dir = tmp_path / "coll", tmp_path / "host"
    host_dir.mkdir()
    assert run(capsys, "init", "--dir", coll, "--name", "c")[0] == 0
    openssl_key_and_csr(host_dir, "client", "web-01")
    rc, _, err = run(
        capsys, "enroll", "--dir", coll, "--host", "web-01", "--journal-key", journal_pub,
        "--csr", host_dir / "client.csr", "--out", host_dir / "bundle",
    )  # fmt: skip
    assert rc == 0, err
    assert not (host_dir / "bundle" / "client.key").exists()  # the key never left the host
    cert = pki.load_certificate(host_dir / "bundle" / "client.crt")
    assert cert.public_key() == pki.load_private_key(host_dir / "client.key").public_key()
    rc, _, err = run(
        capsys, "enroll", "--dir", coll, "--host", "web-02", "--journal-key", journal_pub,
        "--csr", host_dir / "client.csr", "--out", host_dir / "b2",
    )  # fmt: skip
    assert rc == 1 and "not host 'web-02'" in err


SERVER_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:collector.example, DNS:localhost, IP:127.0.0.1
"""
CLIENT_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:urn:sealtrail:host:web-01
"""


@needs_openssl
def test_a_fleet_ca_with_openssl_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], journal_pub: Path
) -> None:
    """docs/collector.md, "With your own CA": the CA key never reaches the collector."""
    pki_dir, coll = tmp_path / "pki", tmp_path / "coll"
    pki_dir.mkdir()
    openssl(
        "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/O=Example/CN=Fleet CA",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=pki_dir,
    )  # fmt: skip
    (pki_dir / "server.ext").write_text(SERVER_EXT)
    (pki_dir / "client.ext").write_text(CLIENT_EXT)
    for stem, cn in (("server", "coll-1"), ("client", "web-01")):
        openssl_key_and_csr(pki_dir, stem, cn)
        openssl(
            "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "825", "-sha256", "-extfile", f"{stem}.ext",
            "-out", f"{stem}.crt",
            cwd=pki_dir,
        )  # fmt: skip
    rc, out, err = run(
        capsys, "init", "--dir", coll, "--name", "coll-1", "--ca-cert", pki_dir / "ca.crt",
        "--server-cert", pki_dir / "server.crt", "--server-key", pki_dir / "server.key",
    )  # fmt: skip
    assert rc == 0, err
    assert "collector.example" in out and not (coll / "ca.key").exists()
    base = ["enroll", "--dir", coll, "--host", "web-01", "--journal-key", journal_pub]
    rc, _, err = run(capsys, *base, "--out", tmp_path / "b0")
    assert rc == 1 and "has no CA key" in err and "--cert" in err
    rc, _, err = run(capsys, *base, "--cert", pki_dir / "client.crt", "--out", tmp_path / "b")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "ca.crt",
        "client.crt",
        "collector.pub",
    ]
    seen = tls.handshake(
        (pki_dir / "server.crt", pki_dir / "server.key"),
        coll / "ca.crt" if (coll / "ca.crt").exists() else pki_dir / "ca.crt",
        (tmp_path / "b" / "client.crt", pki_dir / "client.key"),
        tmp_path / "b" / "ca.crt",
        server_name="collector.example",
    )
    with open_store(str(coll / "store.sqlite")) as store:
        host = store.host("web-01")
    assert host is not None and seen == host.fingerprint
    # a certificate of another CA, or for another host, is not bound
    other = tmp_path / "other"
    other.mkdir()
    pki.write_cert(
        other / "x.crt",
        pki.issue_client(pki.create_ca("x"), pki.new_key().public_key(), "web-02"),
    )
    rc, _, err = run(
        capsys, "enroll", "--dir", coll, "--host", "web-02", "--journal-key", journal_pub,
        "--cert", other / "x.crt", "--out", tmp_path / "b2",
    )  # fmt: skip
    assert rc == 1 and "not signed by the collector's CA" in err
    cert = x509.load_pem_x509_certificate((pki_dir / "client.crt").read_bytes())
    assert pki.certificate_names(cert) == {"web-01"}


def test_the_command_is_registered() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "collector", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "enroll" in done.stdout and "init" in done.stdout

"""The collector's PKI, down to real TLS 1.3 handshakes on loopback with Python's ssl."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.collector import pki
from agent.collector.errors import CollectorError, PkiError
from agent.collector.keyfiles import read_private
from tests.collector import tls

LONG_AGO = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> pki.Authority:
    return pki.create_ca("coll-1")


def write_pair(
    directory: Path, stem: str, cert: x509.Certificate, key: object
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    pki.write_cert(cert_path, cert)
    pki.write_key(key_path, key)  # type: ignore[arg-type]
    return cert_path, key_path


def handshake(
    tmp_path: Path, ca: pki.Authority, client: tuple[x509.Certificate, object] | None
) -> str:
    """One TLS 1.3 connection with a server certificate of ``ca``; the server's view."""
    server_key = pki.new_key()
    server_cert = pki.issue_server(ca, server_key.public_key(), "coll-1", pki.default_sans())
    directory = tmp_path / f"tls-{os.urandom(4).hex()}"
    directory.mkdir()
    server = write_pair(directory, "server", server_cert, server_key)
    pki.write_cert(directory / "ca.crt", ca.cert)
    pair = write_pair(directory, "client", *client) if client else None
    return tls.handshake(server, directory / "ca.crt", pair, directory / "ca.crt")


# ------------------------------------------------------------------------------ certificates
def test_the_ca_is_a_p256_ca(ca: pki.Authority) -> None:
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert "coll-1" in ca.cert.subject.rfc4514_string()


def test_server_certificate_names(ca: pki.Authority) -> None:
    key = pki.new_key()
    cert = pki.issue_server(ca, key.public_key(), "coll-1", pki.default_sans())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", socket.gethostname().lower()} <= set(san.get_values_for_type(x509.DNSName))
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    custom = pki.issue_server(ca, key.public_key(), "coll-1", ["Collector.Example.", "10.1.2.3"])
    names = custom.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["collector.example"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]


@pytest.mark.parametrize("san", ["", "bad name", "-x.example", "a..b", "x" * 64 + ".example"])
def test_bad_sans_are_refused(san: str) -> None:
    with pytest.raises(PkiError, match="neither an IP address nor a DNS name"):
        pki.parse_san(san)


def test_client_certificate_names_its_host(ca: pki.Authority) -> None:
    cert = pki.issue_client(ca, pki.new_key().public_key(), "web-01")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web-01"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:sealtrail:host:web-01"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.certificate_names(cert) == {"web-01"}
    pki.check_client_certificate(cert, ca.cert, "web-01")
    with pytest.raises(CollectorError, match="not usable"):
        pki.issue_client(ca, pki.new_key().public_key(), "web 01")


def test_fingerprint_is_sha256_of_the_der(ca: pki.Authority) -> None:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    der = ca.cert.public_bytes(Encoding.DER)
    assert pki.fingerprint(ca.cert) == pki.fingerprint(der) == hashlib.sha256(der).hexdigest()


def test_a_csr_gives_only_its_key(ca: pki.Authority) -> None:
    key = pki.new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web-01")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    public = pki.csr_public_key(csr, "web-01")
    cert = pki.issue_client(ca, public, "web-01")
    assert cert.public_key() == key.public_key()
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(PkiError, match="for CN='web-01', not host 'web-02'"):
        pki.csr_public_key(csr, "web-02")
    weak = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(ec.generate_private_key(ec.SECP192R1()), hashes.SHA256())
    )
    with pytest.raises(PkiError, match="curve secp192r1 is not accepted"):
        pki.csr_public_key(weak, "web-01")


def test_certificates_issued_elsewhere_are_checked(ca: pki.Authority) -> None:
    other = pki.create_ca("other")
    key = pki.new_key().public_key()
    with pytest.raises(PkiError, match="not signed by the collector's CA"):
        pki.check_client_certificate(pki.issue_client(other, key, "web-01"), ca.cert, "web-01")
    expired = pki.issue_client(ca, key, "web-01", days=30, now=LONG_AGO)
    with pytest.raises(PkiError, match="not now"):
        pki.check_client_certificate(expired, ca.cert, "web-01")
    with pytest.raises(PkiError, match="does not name host 'web-02'"):
        pki.check_client_certificate(pki.issue_client(ca, key, "web-01"), ca.cert, "web-02")
    server = pki.issue_server(ca, key, "web-01", ["web-01"])
    with pytest.raises(PkiError, match="lacks the clientAuth"):
        pki.check_client_certificate(server, ca.cert, "web-01")


def test_an_authority_is_a_ca_with_its_own_key(ca: pki.Authority) -> None:
    leaf_key = pki.new_key()
    leaf = pki.issue_client(ca, leaf_key.public_key(), "web-01")
    with pytest.raises(PkiError, match="is not a CA"):
        pki.Authority(leaf, leaf_key)
    with pytest.raises(PkiError, match="does not belong to the certificate"):
        pki.Authority(ca.cert, pki.new_key())


# ------------------------------------------------------------------------------ TLS
def test_mutual_tls_13_binds_the_client_certificate(tmp_path: Path, ca: pki.Authority) -> None:
    key = pki.new_key()
    cert = pki.issue_client(ca, key.public_key(), "web-01")
    assert handshake(tmp_path, ca, (cert, key)) == pki.fingerprint(cert)


def test_tls_refuses_no_foreign_or_expired_client_certificates(
    tmp_path: Path, ca: pki.Authority
) -> None:
    assert handshake(tmp_path, ca, None).startswith("refused")
    key = pki.new_key()
    foreign = pki.issue_client(pki.create_ca("other"), key.public_key(), "web-01")
    assert "certificate verify failed" in handshake(tmp_path, ca, (foreign, key))
    expired = pki.issue_client(ca, key.public_key(), "web-01", days=30, now=LONG_AGO)
    assert "certificate has expired" in handshake(tmp_path, ca, (expired, key))


# ------------------------------------------------------------------------------ key files
def test_private_keys_are_0600_from_creation(tmp_path: Path, ca: pki.Authority) -> None:
    old = os.umask(0)
    try:
        pki.write_key(tmp_path / "k.key", ca.key)
    finally:
        os.umask(old)
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert pki.load_private_key(tmp_path / "k.key").public_key() == ca.key.public_key()
    with pytest.raises(PkiError, match="already exists; a key is never overwritten"):
        pki.write_key(tmp_path / "k.key", ca.key)


def test_keys_others_can_read_are_refused(tmp_path: Path, ca: pki.Authority) -> None:
    path = tmp_path / "k.key"
    pki.write_key(path, ca.key)
    path.chmod(0o640)
    with pytest.raises(PkiError, match=r"has mode 0640: group or others have access.*chmod 600"):
        pki.load_private_key(path)
    path.chmod(0o604)
    with pytest.raises(PkiError, match="mode 0604"):
        read_private(path)
    path.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(PkiError, match="cannot read private key"):
        read_private(link)
    (tmp_path / "bad.key").write_bytes(b"not a key")
    (tmp_path / "bad.key").chmod(0o600)
    with pytest.raises(PkiError, match="not a PEM private key"):
        pki.load_private_key(tmp_path / "bad.key")


def test_certificates_and_requests_load_as_pem_or_der(tmp_path: Path, ca: pki.Authority) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    (tmp_path / "ca.der").write_bytes(ca.cert.public_bytes(Encoding.DER))
    assert pki.load_certificate(tmp_path / "ca.der") == ca.cert
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(PkiError, match="is not a certificate request \\(PEM or DER\\)"):
        pki.load_csr(tmp_path / "junk")
    with pytest.raises(PkiError, match=r"cannot read .*missing"):
        pki.load_certificate(tmp_path / "missing")

"""The collector's PKI: its CA, its server certificate, one client certificate per host.

Keys are ECDSA P-256. Python's ssl (OpenSSL 3) does TLS 1.3 with Ed25519 certificates too, but
P-256 is what every TLS stack, HSM, load balancer and operator CA handles, in TLS 1.2 as well,
so an operator's own PKI (``--ca-cert/--ca-key``, or the openssl commands in docs/collector.md)
fits without exceptions. Ed25519 is used where only sealtrail reads the signatures: journal
seals and the collector's receipts.

A host is bound by its certificate's fingerprint (``fingerprint``: SHA-256 of the DER, hex),
not by its name: the name in the certificate is checked at enrollment and shown, the
fingerprint is what the server looks up for a connection.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.collector.errors import PkiError
from agent.collector.keyfiles import read_private, read_public, write_private, write_public
from agent.collector.names import HOST_URN_PREFIX, check_host_name, host_urn

CA_DAYS = 3650
CERT_DAYS = 825
#: Certificates start a little in the past, so a host whose clock lags accepts them at once.
_BACKDATE = datetime.timedelta(minutes=5)
_ORG = "sealtrail"
T = TypeVar("T")
_USAGE_NAMES = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
}
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)").fullmatch


@dataclass(frozen=True)
class Authority:
    """A CA certificate with its private key; cannot hold a key of another certificate."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    def __post_init__(self) -> None:
        try:
            constraints = self.cert.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise PkiError(
                f"certificate {_subject(self.cert)} is not a CA (basicConstraints CA:TRUE)"
            )
        check_key_pair(self.cert, self.key)

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        algorithm = (
            None
            if isinstance(self.key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
            else hashes.SHA256()
        )
        return builder.sign(self.key, algorithm)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(name: str, *, days: int = CA_DAYS, now: datetime.datetime | None = None) -> Authority:
    """A new self-signed collector CA named after the collector."""
    key = new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, f"sealtrail collector CA {name}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _validity(x509.CertificateBuilder(), days, now)
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    )
    cert = builder.sign(key, hashes.SHA256())
    return Authority(cert, key)


def default_sans() -> list[str]:
    """The server certificate's names unless ``--san`` is given."""
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname().lower()
    if hostname and hostname not in names:
        names.append(hostname)
    return names


def parse_san(text: str) -> x509.GeneralName:
    """An IP address (v4 or v6) or a DNS name (a leading ``*.`` allowed) as a SAN entry."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if not name or len(name) > 253 or not all(_DNS_LABEL(label) for label in labels):
        raise PkiError(f"--san {text!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def issue_server(
    ca: Authority,
    public_key: CertificatePublicKeyTypes,
    name: str,
    sans: Sequence[str],
    *,
    days: int = CERT_DAYS,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """The collector's TLS server certificate (serverAuth) for the names and addresses given."""
    if not sans:
        raise PkiError("a server certificate needs at least one name or address (--san)")
    entries = list(dict.fromkeys(parse_san(s) for s in sans))
    return _leaf(ca, public_key, name, entries, ExtendedKeyUsageOID.SERVER_AUTH, days, now)


def issue_client(
    ca: Authority,
    public_key: CertificatePublicKeyTypes,
    host: str,
    *,
    days: int = CERT_DAYS,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A host's client certificate (clientAuth): CN = host, URI SAN urn:sealtrail:host:NAME."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(host_urn(host))]
    return _leaf(ca, public_key, host, names, ExtendedKeyUsageOID.CLIENT_AUTH, days, now)


def csr_public_key(csr: x509.CertificateSigningRequest, host: str) -> CertificatePublicKeyTypes:
    """The key of a host's own certificate request, after checking the request.

    Only the key is taken: the certificate gets the collector's own subject and extensions, so a
    request cannot ask for a CA, another host's name or serverAuth.
    """
    if not csr.is_signature_valid:
        raise PkiError("the certificate request's signature is not valid")
    common = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common and common[0].value != host:
        raise PkiError(
            f"the certificate request is for CN={common[0].value!r}, not host {host!r}; "
            "make the request with the host's name as CN, or leave the CN out"
        )
    key = csr.public_key()
    _check_leaf_key(key)
    return key


def check_client_certificate(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    host: str,
    *,
    now: datetime.datetime | None = None,
) -> None:
    """A certificate issued elsewhere may be bound to ``host`` only if the collector's CA signed
    it directly, it is valid now, it names the host and it may be used as a TLS client."""
    check_issued(cert, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, now=now)
    if host not in certificate_names(cert):
        raise PkiError(
            f"certificate {_subject(cert)} does not name host {host!r} (in its CN, a DNS SAN or "
            f"the URI SAN {host_urn(host)})"
        )


def check_issued(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    usage: x509.ObjectIdentifier,
    *,
    now: datetime.datetime | None = None,
) -> None:
    """``cert`` is signed directly by ``ca_cert``, valid now, with an accepted key, and allowed
    ``usage`` (clientAuth, serverAuth) if it restricts its extended key usage at all."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(
            f"certificate {_subject(cert)} is not signed by the collector's CA "
            f"{_subject(ca_cert)}: a TLS peer trusting that CA would refuse it"
        ) from None
    moment = now or _now()
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise PkiError(
            f"certificate {_subject(cert)} is valid from {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    _check_leaf_key(cert.public_key())
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if usage not in usages:
        name = _USAGE_NAMES.get(usage, usage.dotted_string)
        raise PkiError(f"certificate {_subject(cert)} lacks the {name} extended key usage")


def check_key_pair(cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> None:
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise PkiError(f"the key does not belong to the certificate {_subject(cert)}")


def certificate_names(cert: x509.Certificate) -> set[str]:
    """The host names a client certificate carries: CN, DNS SANs and sealtrail URN SANs."""
    names = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names.update(san.get_values_for_type(x509.DNSName))
    names.update(
        uri.removeprefix(HOST_URN_PREFIX)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(HOST_URN_PREFIX)
    )
    return names


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a server certificate is for, as text."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *san.get_values_for_type(x509.DNSName),
        *map(str, san.get_values_for_type(x509.IPAddress)),
    ]


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """SHA-256 of the certificate's DER, lowercase hex: what binds a certificate to a host.

    Takes DER bytes too, as ``ssl.SSLObject.getpeercert(binary_form=True)`` gives them.
    """
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


# ------------------------------------------------------------------------------ files
def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key(path: Path, key: CertificateIssuerPrivateKeyTypes) -> None:
    write_private(path, key_pem(key))


def write_cert(path: Path, cert: x509.Certificate) -> None:
    write_public(path, cert_pem(cert))


def load_private_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    data = read_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PkiError(
            f"private key {path} is encrypted; give it decrypted (openssl pkey -in {path} -out "
            "NEW.key, in a 0600 file)"
        ) from None
    except ValueError:
        raise PkiError(f"{path} is not a PEM private key") from None
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise PkiError(f"{path} holds a {type(key).__name__}, which cannot sign certificates")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    return _pem_or_der(
        path, x509.load_pem_x509_certificate, x509.load_der_x509_certificate, "a certificate"
    )


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    return _pem_or_der(
        path, x509.load_pem_x509_csr, x509.load_der_x509_csr, "a certificate request"
    )


def _pem_or_der(path: Path, pem: Callable[[bytes], T], der: Callable[[bytes], T], what: str) -> T:
    data = read_public(path)
    for load in (pem, der):
        try:
            return load(data)
        except ValueError:
            pass
    raise PkiError(f"{path} is not {what} (PEM or DER)")


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    cert = load_certificate(cert_path)
    try:
        return Authority(cert, load_private_key(key_path))
    except PkiError as exc:
        raise PkiError(f"{cert_path}, {key_path}: {exc}") from None


# ------------------------------------------------------------------------------ helpers
def _leaf(
    ca: Authority,
    public_key: CertificatePublicKeyTypes,
    common_name: str,
    names: Iterable[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
    now: datetime.datetime | None,
) -> x509.Certificate:
    _check_leaf_key(public_key)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, check_host_name(common_name)),
        ]
    )
    builder = (
        _validity(x509.CertificateBuilder(), days, now)
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    return ca.sign(builder)


def _check_leaf_key(key: CertificatePublicKeyTypes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise PkiError(f"an EC key on curve {key.curve.name} is not accepted: use P-256")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise PkiError(f"an RSA key of {key.key_size} bits is too small: use 2048 or more")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise PkiError(f"a {type(key).__name__} cannot be a TLS key here: use P-256")


def _validity(
    builder: x509.CertificateBuilder, days: int, now: datetime.datetime | None
) -> x509.CertificateBuilder:
    if days < 1:
        raise PkiError(f"a certificate must be valid for at least one day, not {days}")
    start = (now or _now()) - _BACKDATE
    return builder.not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"

"""A development certificate authority for native mTLS (`chatplane certs init`): an EC P-256 CA
and one certificate per service (plus `client` for the CLI and tests), each valid as server and
as client, naming its service by DNS name, loopback addresses and a SPIFFE-style URI.

Layout of the directory: `ca.crt`, `ca.key`, `<party>.crt`, `<party>.key`; keys are 0600, the
directory 0700 when created here. Existing files are kept (an existing CA issues the missing
certificates) unless `force` starts over with a new CA."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chatplane.common.tls import TlsFiles

SERVICE_PARTIES = ("gateway", "agent", "memory", "persistence")
CLIENT_PARTY = "client"
PARTIES = (*SERVICE_PARTIES, CLIENT_PARTY)
CA_NAME = "ca"
TRUST_DOMAIN = "chatplane.local"
NAMESPACE = "default"
DEFAULT_DAYS = 365
ORGANIZATION = "chatplane development"
# Every certificate is valid on this machine's loopback under these names.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Clock skew between machines: certificates are valid from a little before they were issued.
_BACKDATE = timedelta(minutes=5)


class CertificateDirError(Exception):
    """The directory holds certificates that cannot be completed without starting over."""


def spiffe_id(party: str) -> str:
    """The URI SAN of a party, in the form Istio uses for service accounts."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{party}"


def party_files(directory: Path, party: str) -> TlsFiles:
    """The certificate, key and CA files of a party in a certificate directory."""
    return TlsFiles(
        cert=directory / f"{party}.crt",
        key=directory / f"{party}.key",
        ca=directory / f"{CA_NAME}.crt",
    )


@dataclass(frozen=True, slots=True)
class IssuedFile:
    """One file of the directory and whether this run created it."""

    path: Path
    created: bool


def init_certificates(
    directory: Path,
    *,
    days: int = DEFAULT_DAYS,
    hosts: Sequence[str] = (),
    force: bool = False,
    now: datetime | None = None,
) -> list[IssuedFile]:
    """Creates the CA and every party's certificate that is missing (all of them with
    `force`); `hosts` are extra DNS names or IP addresses for the service certificates."""
    if days <= 0:
        raise ValueError("days must be positive")
    moment = now or datetime.now(UTC)
    if not directory.exists():
        # A directory of our own is closed to others; an existing one (the caller's choice)
        # keeps its mode: the keys in it are 0600 either way.
        directory.mkdir(parents=True)
        directory.chmod(0o700)
    ca_cert_path, ca_key_path = directory / f"{CA_NAME}.crt", directory / f"{CA_NAME}.key"
    results: list[IssuedFile] = []
    if force or not ca_cert_path.exists():
        orphans = [p for p in PARTIES if (directory / f"{p}.crt").exists()]
        if orphans and not force:
            raise CertificateDirError(
                f"{directory} has certificates ({', '.join(orphans)}) but no {ca_cert_path.name}: "
                "use --force to start over with a new CA"
            )
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, moment, days)
        _write_key(ca_key_path, ca_key)
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        results += [IssuedFile(ca_cert_path, True), IssuedFile(ca_key_path, True)]
        fresh_ca = True
    else:
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
        results += [IssuedFile(ca_cert_path, False), IssuedFile(ca_key_path, False)]
        fresh_ca = False
    for party in PARTIES:
        files = party_files(directory, party)
        if not fresh_ca and files.cert.exists() and files.key.exists():
            results += [IssuedFile(files.cert, False), IssuedFile(files.key, False)]
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        names = [party, *LOOPBACK_NAMES, *(hosts if party in SERVICE_PARTIES else ())]
        cert = _party_certificate(party, names, key, ca_cert, ca_key, moment, days)
        _write_key(files.key, key)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        results += [IssuedFile(files.cert, True), IssuedFile(files.key, True)]
    return results


def _subject(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Digital signatures (the TLS handshake), plus certificate and CRL signing for the CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime, days: int) -> x509.Certificate:
    name = _subject("chatplane development CA")
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _party_certificate(
    party: str,
    names: Iterable[str],
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    days: int,
) -> x509.Certificate:
    public = key.public_key()
    # A certificate never outlives the CA that signed it.
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(party))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id(party)), *_general_names(names)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses, each once, in the given order."""
    general: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return general


def _load_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise CertificateDirError(
            f"cannot use the CA in {cert_path.parent} ({error}): use --force to start over"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateDirError(f"{key_path} is not an EC key: use --force to start over")
    return cert, key


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, 0o600)


def _write(path: Path, content: bytes, mode: int) -> None:
    """Writes through a temporary file created with `mode` (a key is never readable by others,
    not even for a moment), then renames it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    os.chmod(temporary, mode)  # the umask may have narrowed it
    os.replace(temporary, path)

"""Native mutual TLS outside a service mesh: a service's certificate, key and CA files checked
at start (a clear `TlsConfigError` instead of a handshake failure later), turned into gRPC
server and channel credentials, and the certificate identity (SPIFFE id, common name) of this
service and of a connected peer. See docs/security.md."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

from chatplane.common.errors import ConfigError

_log = logging.getLogger(__name__)

# The settings' environment variables, named in error messages so an operator knows what to fix.
CERT_VAR = "CHATPLANE_TLS_CERT"
KEY_VAR = "CHATPLANE_TLS_KEY"
CA_VAR = "CHATPLANE_TLS_CA"
REQUIRE_CLIENT_CERT_VAR = "CHATPLANE_TLS_REQUIRE_CLIENT_CERT"
# A certificate this close to its end is logged as a warning at start.
EXPIRY_WARNING = timedelta(days=14)


class TlsConfigError(ConfigError):
    """The TLS files are missing, unreadable, malformed or do not belong together."""

    heading = "invalid TLS configuration"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a party's certificate (chain), private key and trusted CA bundle are."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
        """The three paths, None when none is set; only some of them set is an error."""
        given = {CERT_VAR: cert, KEY_VAR: key, CA_VAR: ca}
        if not any(given.values()):
            return None
        missing = [name for name, path in given.items() if not path]
        if missing:
            raise TlsConfigError(
                f"TLS needs a certificate, a key and a CA: {', '.join(missing)} not set "
                f"(set all of {CERT_VAR}, {KEY_VAR}, {CA_VAR}, or none)"
            )
        assert cert and key and ca
        return cls(cert=cert, key=key, ca=ca)

    def env(self) -> dict[str, str]:
        """The environment variables that hand these files to a service process."""
        return {CERT_VAR: str(self.cert), KEY_VAR: str(self.key), CA_VAR: str(self.ca)}


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """Who a certificate names: the SPIFFE-style URI SAN (what a future authorization check
    compares), the subject common name, and the DNS/IP names it is valid for."""

    common_name: str
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: datetime

    @property
    def spiffe_id(self) -> str:
        """The first `spiffe://` URI SAN, or "" when the certificate has none."""
        return next((uri for uri in self.uris if uri.startswith("spiffe://")), "")

    @property
    def principal(self) -> str:
        """The identity to authorize on: the SPIFFE id, else the common name."""
        return self.spiffe_id or self.common_name

    @classmethod
    def of(cls, certificate: x509.Certificate) -> CertificateIdentity:
        """The identity a certificate carries."""
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        return cls(
            common_name=str(names[0].value) if names else "",
            uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
            dns_names=tuple(san.get_values_for_type(x509.DNSName)),
            ip_addresses=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
            not_after=certificate.not_valid_after_utc,
        )


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    """Checked TLS material of one party (a service, the CLI, a test client), ready for gRPC."""

    files: TlsFiles
    cert_chain: bytes
    private_key: bytes
    root_certificates: bytes
    identity: CertificateIdentity
    require_client_auth: bool = True

    @classmethod
    def load(
        cls, files: TlsFiles, *, require_client_auth: bool = True, now: datetime | None = None
    ) -> TlsCredentials:
        """Reads and checks the files: each parses, the key belongs to the certificate, the
        certificate is valid now and was issued by a CA of the bundle."""
        chain_pem = _read(files.cert, CERT_VAR)
        key_pem = _read(files.key, KEY_VAR)
        ca_pem = _read(files.ca, CA_VAR)
        chain = _certificates(chain_pem, files.cert, CERT_VAR)
        authorities = _certificates(ca_pem, files.ca, CA_VAR)
        key = _private_key(key_pem, files.key)
        leaf = chain[0]
        if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
            raise TlsConfigError(
                f"the private key {files.key} ({KEY_VAR}) does not belong to the certificate "
                f"{files.cert} ({CERT_VAR}): they are not a pair"
            )
        moment = now or datetime.now(UTC)
        if moment < leaf.not_valid_before_utc:
            raise TlsConfigError(
                f"the certificate {files.cert} is not valid before "
                f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            )
        if moment > leaf.not_valid_after_utc:
            raise TlsConfigError(
                f"the certificate {files.cert} expired on "
                f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: issue a new one "
                "(`chatplane certs init --force` for development certificates)"
            )
        if not _issued_by_bundle(chain, authorities):
            raise TlsConfigError(
                f"the certificate {files.cert} was not issued by a CA in {files.ca} ({CA_VAR}): "
                "peers that trust this CA would refuse it"
            )
        return cls(
            files=files,
            cert_chain=chain_pem,
            private_key=key_pem,
            root_certificates=ca_pem,
            identity=CertificateIdentity.of(leaf),
            require_client_auth=require_client_auth,
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with this certificate; verify clients against the CA (required by default)."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=self.require_client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Call with this certificate as the client certificate; verify servers against the CA
        (and their name against the address called)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.cert_chain,
        )

    def log_identity(self) -> None:
        """One log line naming this service's certificate identity; a warning near expiry."""
        identity = self.identity
        fields = {
            "tls_identity": identity.principal,
            "tls_common_name": identity.common_name,
            "tls_not_after": identity.not_after.isoformat(),
            "tls_require_client_cert": self.require_client_auth,
        }
        _log.info("mutual TLS on", extra=fields)
        if identity.not_after - datetime.now(UTC) < EXPIRY_WARNING:
            _log.warning("TLS certificate expires soon: rotate it", extra=fields)


class _TlsSettings(Protocol):
    """The fields of `Settings` this module reads."""

    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def tls_require_client_cert(self) -> bool: ...


def load_tls(settings: _TlsSettings) -> TlsCredentials | None:
    """The service's checked TLS credentials, or None when TLS is off (no files configured)."""
    files = TlsFiles.of(settings.tls_cert, settings.tls_key, settings.tls_ca)
    if files is None:
        return None
    return TlsCredentials.load(files, require_client_auth=settings.tls_require_client_cert)


def client_channel(
    address: str, files: TlsFiles | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel for a client of the stack (CLI, launcher, tests, benchmarks): mutual TLS with
    these files, plaintext when None."""
    if files is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    credentials = TlsCredentials.load(files).channel_credentials()
    return grpc.aio.secure_channel(address, credentials, options=list(options))


class _PeerContext(Protocol):
    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


def peer_identity(context: _PeerContext) -> CertificateIdentity | None:
    """The verified client certificate's identity of the current call, or None on a plaintext
    connection (or TLS without a client certificate). For authorization checks; it parses the
    certificate, so call it when needed, not on every call by default."""
    pem = next(iter(context.auth_context().get("x509_pem_cert", ())), None)
    if not pem:
        return None
    return CertificateIdentity.of(x509.load_pem_x509_certificate(pem))


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsConfigError(
            f"cannot read {path} ({variable}): {error.strerror or error}"
        ) from None


def _certificates(pem: bytes, path: Path, variable: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsConfigError(
            f"{path} ({variable}) holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    return certificates


def _private_key(pem: bytes, path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise TlsConfigError(
            f"the private key {path} ({KEY_VAR}) is encrypted: give an unencrypted PEM key "
            "(protect it with file permissions, 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise TlsConfigError(f"{path} ({KEY_VAR}) holds no PEM private key: {error}") from None


def _public_bytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issued_by_bundle(chain: list[x509.Certificate], authorities: list[x509.Certificate]) -> bool:
    """Whether each certificate of the chain is signed by the next, and the last one by (or is)
    a CA of the bundle."""
    for child, parent in itertools.pairwise(chain):
        if not _signed_by(child, parent):
            return False
    top = chain[-1]
    return top in authorities or any(_signed_by(top, ca) for ca in authorities)


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True

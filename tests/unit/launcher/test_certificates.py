"""The development CA of `chatplane certs init`: chains that verify as server and client
certificates, the names and identities each certificate carries, private file permissions, and
idempotence (kept files stay, missing ones are issued by the same CA, --force starts over)."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from chatplane.cli.main import cli
from chatplane.launcher.certificates import (
    PARTIES,
    SERVICE_PARTIES,
    CertificateDirError,
    init_certificates,
    party_files,
    spiffe_id,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    init_certificates(directory, days=30, hosts=["chat.example.com", "10.0.0.7"])
    return directory


def test_every_party_chain_verifies_as_server_and_as_client(certs: Path) -> None:
    store = Store([_cert(certs / "ca.crt")])
    now = datetime.now(UTC)
    for party in PARTIES:
        leaf = _cert(certs / f"{party}.crt")
        server = (
            PolicyBuilder().store(store).time(now).build_server_verifier(x509.DNSName("localhost"))
        )
        assert server.verify(leaf, []) == [leaf, _cert(certs / "ca.crt")]
        ip_server = (
            PolicyBuilder()
            .store(store)
            .time(now)
            .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        )
        ip_server.verify(leaf, [])
        client = PolicyBuilder().store(store).time(now).build_client_verifier()
        verified = client.verify(leaf, [])
        assert verified.chain[-1] == _cert(certs / "ca.crt")


def test_certificates_name_their_party_loopback_and_extra_hosts(certs: Path) -> None:
    for party in PARTIES:
        cert = _cert(certs / f"{party}.crt")
        san = _san(cert)
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id(party)]
        dns = san.get_values_for_type(x509.DNSName)
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        assert party in dns
        assert "localhost" in dns
        assert {"127.0.0.1", "::1"} <= ips
        extra = party in SERVICE_PARTIES
        assert ("chat.example.com" in dns) is extra
        assert ("10.0.0.7" in ips) is extra
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == party
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
    assert spiffe_id("agent") == "spiffe://chatplane.local/ns/default/sa/agent"


def test_validity_and_ca_constraints(certs: Path) -> None:
    ca = _cert(certs / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf = _cert(certs / "gateway.crt")
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=29) < lifetime <= timedelta(days=30)


def test_keys_are_private_and_the_directory_closed(certs: Path) -> None:
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    for party in (*PARTIES, "ca"):
        assert stat.S_IMODE((certs / f"{party}.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((certs / f"{party}.crt").stat().st_mode) == 0o644
    assert not list(certs.glob(".*.tmp"))


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    init_certificates(tmp_path)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "client.key").stat().st_mode) == 0o600


def test_init_is_idempotent_and_completes_from_the_same_ca(tmp_path: Path) -> None:
    first = init_certificates(tmp_path)
    assert all(f.created for f in first) and len(first) == 2 + 2 * len(PARTIES)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = init_certificates(tmp_path)
    assert not any(f.created for f in again)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    party_files(tmp_path, "memory").key.unlink()
    completed = init_certificates(tmp_path)
    assert sorted(f.path.name for f in completed if f.created) == ["memory.crt", "memory.key"]
    _cert(tmp_path / "memory.crt").verify_directly_issued_by(_cert(tmp_path / "ca.crt"))
    assert (tmp_path / "ca.key").read_bytes() == before["ca.key"]

    forced = init_certificates(tmp_path, force=True)
    assert all(f.created for f in forced)
    assert (tmp_path / "ca.key").read_bytes() != before["ca.key"]


def test_certificates_without_their_ca_are_not_silently_replaced(tmp_path: Path) -> None:
    init_certificates(tmp_path)
    (tmp_path / "ca.crt").unlink()
    with pytest.raises(CertificateDirError, match="--force"):
        init_certificates(tmp_path)


def test_certs_init_command(tmp_path: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["--data-dir", str(tmp_path), "certs", "init", "--days", "7"])
    assert created.exit_code == 0, created.output
    assert f"created {2 + 2 * len(PARTIES)} files in {tmp_path / 'tls'}" in created.output
    kept = runner.invoke(cli, ["--data-dir", str(tmp_path), "certs", "init"])
    assert kept.exit_code == 0
    assert "nothing changed" in kept.output
    bad = runner.invoke(cli, ["certs", "init", "--dir", str(tmp_path / "x"), "--days", "0"])
    assert bad.exit_code == 2

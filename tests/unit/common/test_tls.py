"""TLS settings checked at start (each misconfiguration is a `TlsConfigError` naming the file
and the variable), and what a server sees of a peer: the client certificate's identity, and
the name check of the server's certificate against the address called."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chatplane.common.settings import Settings
from chatplane.common.tls import (
    TlsConfigError,
    TlsCredentials,
    TlsFiles,
    client_channel,
    load_tls,
    peer_identity,
)
from chatplane.launcher.certificates import init_certificates, party_files

_METHOD = "/test.Echo/WhoAmI"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    init_certificates(directory, days=30)
    return directory


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("other-tls")
    init_certificates(directory, days=30)
    return directory


def test_settings_load_the_service_identity(certs: Path) -> None:
    files = party_files(certs, "agent")
    settings = Settings(tls_cert=files.cert, tls_key=files.key, tls_ca=files.ca)
    tls = load_tls(settings)
    assert tls is not None
    assert tls.require_client_auth
    assert tls.identity.principal == "spiffe://chatplane.local/ns/default/sa/agent"
    assert tls.identity.common_name == "agent"
    assert load_tls(Settings()) is None


def test_settings_read_tls_files_from_the_environment(
    certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in party_files(certs, "memory").env().items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("CHATPLANE_TLS_REQUIRE_CLIENT_CERT", "false")
    settings = Settings()
    assert settings.tls_cert == certs / "memory.crt"
    tls = load_tls(settings)
    assert tls is not None and not tls.require_client_auth


def test_only_some_files_set_is_an_error(certs: Path) -> None:
    with pytest.raises(TlsConfigError, match="CHATPLANE_TLS_KEY, CHATPLANE_TLS_CA not set"):
        load_tls(Settings(tls_cert=certs / "agent.crt"))


def test_missing_file(certs: Path, tmp_path: Path) -> None:
    files = TlsFiles(cert=certs / "agent.crt", key=tmp_path / "gone.key", ca=certs / "ca.crt")
    with pytest.raises(TlsConfigError, match=r"cannot read .*gone.key \(CHATPLANE_TLS_KEY\)"):
        TlsCredentials.load(files)


def test_key_of_another_certificate(certs: Path) -> None:
    files = TlsFiles(cert=certs / "agent.crt", key=certs / "memory.key", ca=certs / "ca.crt")
    with pytest.raises(TlsConfigError, match="does not belong to the certificate"):
        TlsCredentials.load(files)


def test_certificate_of_another_ca(certs: Path, other_ca: Path) -> None:
    files = TlsFiles(cert=other_ca / "agent.crt", key=other_ca / "agent.key", ca=certs / "ca.crt")
    with pytest.raises(TlsConfigError, match="not issued by a CA in"):
        TlsCredentials.load(files)


def test_not_pem(certs: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(
        TlsConfigError, match=r"junk.pem \(CHATPLANE_TLS_CA\) holds no PEM certificate"
    ):
        TlsCredentials.load(TlsFiles(certs / "agent.crt", certs / "agent.key", junk))
    with pytest.raises(TlsConfigError, match="holds no PEM private key"):
        TlsCredentials.load(TlsFiles(certs / "agent.crt", junk, certs / "ca.crt"))


def test_encrypted_key(certs: Path, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key((certs / "agent.key").read_bytes(), password=None)
    encrypted = tmp_path / "agent.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsConfigError, match="is encrypted"):
        TlsCredentials.load(TlsFiles(certs / "agent.crt", encrypted, certs / "ca.crt"))


def test_expired_and_not_yet_valid(certs: Path) -> None:
    files = party_files(certs, "gateway")
    with pytest.raises(TlsConfigError, match="expired on"):
        TlsCredentials.load(files, now=datetime.now(UTC) + timedelta(days=31))
    with pytest.raises(TlsConfigError, match="not valid before"):
        TlsCredentials.load(files, now=datetime.now(UTC) - timedelta(days=1))


def test_a_stray_key_is_refused(certs: Path, tmp_path: Path) -> None:
    """A key of the right type but not the pair (a fresh EC key) is refused too."""
    stray = tmp_path / "stray.key"
    stray.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(TlsConfigError, match="not a pair"):
        TlsCredentials.load(TlsFiles(certs / "agent.crt", stray, certs / "ca.crt"))


async def _who_am_i(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    identity = peer_identity(context)
    return b"" if identity is None else identity.principal.encode()


@pytest.fixture
async def tls_server(certs: Path) -> AsyncIterator[int]:
    """A server with the gateway's certificate whose one method answers the caller's identity."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_who_am_i)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Echo", {"WhoAmI": handler})]
    )
    credentials = TlsCredentials.load(party_files(certs, "gateway")).server_credentials()
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    yield port
    await server.stop(None)


async def test_server_sees_the_client_certificate_identity(certs: Path, tls_server: int) -> None:
    async with client_channel(f"127.0.0.1:{tls_server}", party_files(certs, "client")) as channel:
        answer = await channel.unary_unary(_METHOD)(b"", timeout=5)
    assert answer == b"spiffe://chatplane.local/ns/default/sa/client"
    async with client_channel(f"localhost:{tls_server}", party_files(certs, "agent")) as channel:
        answer = await channel.unary_unary(_METHOD)(b"", timeout=5)
    assert answer == b"spiffe://chatplane.local/ns/default/sa/agent"


async def test_server_name_is_checked(certs: Path, tls_server: int) -> None:
    """The client refuses a server whose certificate does not name the host it called."""
    credentials = TlsCredentials.load(party_files(certs, "client")).channel_credentials()
    options = [("grpc.ssl_target_name_override", "payments.example.com")]
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{tls_server}", credentials, options=options
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(_METHOD)(b"", timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    options = [("grpc.ssl_target_name_override", "gateway")]
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{tls_server}", credentials, options=options
    ) as channel:
        assert await channel.unary_unary(_METHOD)(b"", timeout=5) != b""


def test_client_channel_refuses_unusable_files(certs: Path) -> None:
    with pytest.raises(TlsConfigError, match="not a pair"):
        client_channel(
            "127.0.0.1:1", TlsFiles(certs / "client.crt", certs / "agent.key", certs / "ca.crt")
        )


def test_empty_variables_mean_tls_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("CHATPLANE_TLS_CERT", "CHATPLANE_TLS_KEY", "CHATPLANE_TLS_CA"):
        monkeypatch.setenv(variable, "")
    assert load_tls(Settings()) is None

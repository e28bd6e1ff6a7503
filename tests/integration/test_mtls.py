"""The four services on native mutual TLS (certificates from `chatplane certs init`): a chat end
to end with the client certificate (Gateway → Agent → Memory, Gateway → Persistence all on
mTLS), the CLI on the same certificates, and what is refused: a plaintext client, a TLS client
without a certificate, a client whose certificate comes from another CA (each UNAVAILABLE at
the handshake, before any RPC runs), and a service whose key does not match its certificate
(exits at start with a clear message)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.common import errors
from chatplane.common.tls import TlsFiles
from chatplane.launcher import ServiceProcess, Stack
from chatplane.launcher.certificates import init_certificates, party_files
from chatplane.launcher.stack import SERVICES
from chatplane.v1 import gateway_pb2
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    create_key,
    poll,
    running_stack,
    unique,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

_CLI = [sys.executable, "-c", "from chatplane.cli.main import main; main()"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    init_certificates(directory, days=2)
    return directory


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("other-tls")
    init_certificates(directory, days=2)
    return directory


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("stack"), FAST_PACE, tls_dir=certs) as running:
        yield running


async def test_chat_end_to_end_with_the_client_certificate(stack: Stack) -> None:
    key = await create_key(stack, unique("tenant"), unique("user"))
    async with stack.channel("gateway") as channel:
        client = Client(channel, key)
        first = await client.chat("My cat is named Bartholomew and he loves sardines.")
        assert first.done is not None and first.deltas
        assert first.started is not None
        # Recall went Agent → Memory over mTLS: a failed call would degrade the answer.
        assert not first.started.started.memory_degraded
        conversation = first.started.started.conversation_id
        second = await client.chat("What is my cat called?", conversation)
        assert second.done is not None
        assert "Bartholomew" in second.text

        async def stored() -> bool:
            # Gateway → Persistence over mTLS; the consumer stores batches a moment after done.
            response = await client.stub.GetConversation(
                gateway_pb2.GetConversationRequest(conversation_id=conversation),
                metadata=client.metadata,
                timeout=10,
            )
            return len(response.messages) == 4

        await poll(stored)


async def test_each_service_runs_with_its_own_certificate(stack: Stack) -> None:
    """The launcher gives every process its own certificate; each logs the identity."""
    for service in SERVICES:
        lines = (stack.data_dir / "logs" / f"{service}.log").read_text().splitlines()
        started = [json.loads(line) for line in lines if '"mutual TLS on"' in line]
        assert len(started) == 1, service
        assert started[0]["tls_identity"] == f"spiffe://chatplane.local/ns/default/sa/{service}"
        assert started[0]["tls_require_client_cert"] is True


async def _health(address: str, credentials: grpc.ChannelCredentials | None) -> None:
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def _credentials(kind: str, certs: Path, other_ca: Path) -> grpc.ChannelCredentials | None:
    ca = (certs / "ca.crt").read_bytes()
    if kind == "plaintext":
        return None
    if kind == "tls without a certificate":
        return grpc.ssl_channel_credentials(root_certificates=ca)
    # A certificate of another CA, presented to a server the client itself trusts.
    foreign = party_files(other_ca, "client")
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=foreign.key.read_bytes(),
        certificate_chain=foreign.cert.read_bytes(),
    )


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_answers_a_client_certificate_of_the_ca(
    stack: Stack, certs: Path, service: str
) -> None:
    files = party_files(certs, "client")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )
    await _health(stack.info().address(service), credentials)


@pytest.mark.parametrize("kind", ["plaintext", "tls without a certificate", "another CA"])
@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_refuses_clients_without_a_certificate_of_the_ca(
    stack: Stack, certs: Path, other_ca: Path, service: str, kind: str
) -> None:
    """The connection fails at the handshake: UNAVAILABLE at once (not a deadline), and no RPC
    reaches the service (not even the open health service)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _health(stack.info().address(service), _credentials(kind, certs, other_ca))
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "failed to connect to all addresses" in (refused.value.details() or "")
    assert loop.time() - began < 4


async def test_the_gateway_refuses_a_valid_api_key_without_a_certificate(
    stack: Stack, certs: Path
) -> None:
    """The API key does not open the door: the transport is refused before authentication."""
    key = await create_key(stack, unique("tenant"), unique("user"))
    credentials = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.crt").read_bytes())
    async with grpc.aio.secure_channel(stack.info().address("gateway"), credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await Client(channel, key).chat("hello")
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_service_with_a_key_of_another_certificate_fails_at_start(
    certs: Path, tmp_path: Path
) -> None:
    wrong = TlsFiles(cert=certs / "agent.crt", key=certs / "memory.key", ca=certs / "ca.crt")
    env = {**os.environ, **wrong.env(), "CHATPLANE_DATA_DIR": str(tmp_path)}
    log = tmp_path / "agent.log"
    with pytest.raises(errors.ConfigError) as failed:
        await ServiceProcess.start("agent", ["--agent-port", "0"], env, log)
    message = str(failed.value)
    assert "agent refused its configuration: invalid TLS configuration: " in message
    assert f"the private key {certs / 'memory.key'} (CHATPLANE_TLS_KEY) does not belong" in message
    text = log.read_text()
    assert '"level": "CRITICAL"' in text
    assert "Traceback" not in text


async def test_a_service_with_a_missing_file_exits_with_status_2(
    certs: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **party_files(certs, "memory").env(),
        "CHATPLANE_TLS_CA": str(tmp_path / "missing-ca.crt"),
        "CHATPLANE_DATA_DIR": str(tmp_path),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatplane.memory",
        "--memory-port",
        "0",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert f"cannot read {tmp_path / 'missing-ca.crt'} (CHATPLANE_TLS_CA)" in stderr.decode()
    assert "Traceback" not in stderr.decode()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_CLI, *args], capture_output=True, text=True, timeout=60, check=False, env=os.environ
    )


async def test_the_cli_chats_with_the_stacks_client_certificate(stack: Stack) -> None:
    data_dir = str(stack.data_dir)
    await stack.development_key()
    answered = await asyncio.to_thread(_cli, "--data-dir", data_dir, "chat", "-m", "hello mTLS")
    assert answered.returncode == 0, answered.stderr
    assert 'You asked: "hello mTLS"' in answered.stdout
    # The same Gateway called without the client certificate.
    address = stack.info().address("gateway")
    refused = await asyncio.to_thread(
        _cli, "--data-dir", data_dir, "chat", "--address", address, "-m", "hello"
    )
    assert refused.returncode == 1
    assert "error: UNAVAILABLE" in refused.stderr

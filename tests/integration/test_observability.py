"""Observability of one chat on the four real service processes, with tracing exported over
OTLP/gRPC to a collector in the test process: one connected trace from the Gateway to the
Persistence batch, Prometheus metrics that moved with bounded labels, JSON logs that carry
the chat's ids but never its text."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from chatplane.launcher import Stack
from chatplane.launcher.certificates import init_certificates
from chatplane.launcher.stack import SERVICES
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.otlp_collector import CollectedSpan, otlp_collector
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    Turn,
    create_key,
    poll,
    running_stack,
    unique,
)
from tests.ops_queries import metric_names, panel_expressions, rule_expressions

pytestmark = pytest.mark.asyncio(loop_scope="module")

CANARY = "canary-quokka-5be1d07f"
TRACE_ID = "5be1d07f0c2a4e6b9d3f1a2b3c4d5e6f"
CALLER_TRACEPARENT = f"00-{TRACE_ID}-a1b2c3d4e5f60718-01"
SPAN_KIND_CONSUMER = 5  # OTLP's Span.SpanKind
SPAN_KIND_PRODUCER = 4


@dataclass
class ObservedChat:
    stack: Stack
    spans: list[CollectedSpan]
    turn: Turn
    tenant: str
    user: str


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def observed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ObservedChat]:
    async with otlp_collector() as (endpoint, spans):
        env = {
            **FAST_PACE,
            "CHATPLANE_TRACE_EXPORTER": "otlp",
            "CHATPLANE_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "CHATPLANE_METRICS_LAG_INTERVAL_SECONDS": "0.2",
        }
        async with running_stack(tmp_path_factory.mktemp("observed"), env) as stack:
            tenant, user = unique("tenant"), unique("user")
            key = await create_key(stack, tenant, user)
            async with grpc.aio.insecure_channel(stack.info().address("gateway")) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                turn = Turn()
                call = stub.Chat(
                    gateway_pb2.ChatRequest(text=f"remember the {CANARY} please"),
                    metadata=(
                        ("authorization", f"Bearer {key}"),
                        ("traceparent", CALLER_TRACEPARENT),
                    ),
                    timeout=60,
                )
                async for event in call:
                    turn.add(event)
                assert turn.done is not None
                yield ObservedChat(stack, spans, turn, tenant, user)


def _scrape(url: str) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


async def scrape(stack: Stack, service: str) -> list[Sample]:
    url = stack.info().metrics_url(service)
    assert url.startswith("http://127.0.0.1:"), url
    return await asyncio.to_thread(_scrape, url)


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    matching = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert matching, f"no sample {name}{labels}"
    return sum(matching)


async def test_one_chat_is_one_connected_trace_linked_to_the_persistence_batch(
    observed: ObservedChat,
) -> None:
    def batch_span() -> CollectedSpan | None:
        producers = [
            s for s in observed.spans if s.kind == SPAN_KIND_PRODUCER and s.trace_id == TRACE_ID
        ]
        for span in observed.spans:
            if span.kind == SPAN_KIND_CONSUMER and any(
                (TRACE_ID, p.span_id) in span.links for p in producers
            ):
                return span
        return None

    expected_spans = (
        ("chatplane-gateway", "/chatplane.v1.GatewayService/Chat"),
        ("chatplane-gateway", "/chatplane.internal.v1.TurnService/BeginTurn"),
        ("chatplane-gateway", "/chatplane.internal.v1.AgentService/Generate"),
        ("chatplane-agent", "/chatplane.internal.v1.AgentService/Generate"),
        ("chatplane-agent", "/chatplane.internal.v1.MemoryService/Recall"),
        ("chatplane-memory", "/chatplane.internal.v1.MemoryService/Recall"),
        ("chatplane-agent", "chat chatplane-offline-1"),
        ("chatplane-agent", "send chatplane.messages"),
        ("chatplane-persistence", "/chatplane.internal.v1.TurnService/BeginTurn"),
    )

    def names() -> set[tuple[str, str]]:
        return {(s.service, s.name) for s in observed.spans if s.trace_id == TRACE_ID}

    async def exported() -> CollectedSpan | None:
        # Spans arrive in batches as they end, the streams' spans last.
        return batch_span() if names() >= set(expected_spans) else None

    try:
        batch = await poll(exported, timeout=15)
    except AssertionError:
        missing = set(expected_spans) - names()
        raise AssertionError(f"missing spans {missing}; the trace has {sorted(names())}") from None
    in_trace = {s.span_id: s for s in observed.spans if s.trace_id == TRACE_ID}
    # Connected: the caller's span is the root; every other span's parent is in the trace.
    for span in in_trace.values():
        assert span.parent_span_id in in_trace or span.parent_span_id == "a1b2c3d4e5f60718", span
    # Gateway → Agent → Memory, each hop a child of the previous one.
    by_name = {(s.service, s.name): s for s in in_trace.values()}
    agent_server = by_name[("chatplane-agent", "/chatplane.internal.v1.AgentService/Generate")]
    gateway_client = by_name[("chatplane-gateway", "/chatplane.internal.v1.AgentService/Generate")]
    assert agent_server.parent_span_id == gateway_client.span_id
    memory_server = by_name[("chatplane-memory", "/chatplane.internal.v1.MemoryService/Recall")]
    agent_recall = by_name[("chatplane-agent", "/chatplane.internal.v1.MemoryService/Recall")]
    assert memory_server.parent_span_id == agent_recall.span_id
    assert agent_recall.parent_span_id == agent_server.span_id
    llm = by_name[("chatplane-agent", "chat chatplane-offline-1")]
    assert llm.parent_span_id == agent_server.span_id
    assert llm.attributes["gen_ai.system"] == "offline"
    assert llm.attributes["gen_ai.request.model"] == "chatplane-offline-1"
    assert llm.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert observed.turn.usage is not None
    assert llm.attributes["gen_ai.usage.output_tokens"] == observed.turn.usage.usage.output_tokens
    assert llm.attributes["gen_ai.usage.input_tokens"] == observed.turn.usage.usage.input_tokens
    producer = by_name[("chatplane-agent", "send chatplane.messages")]
    assert producer.parent_span_id == agent_server.span_id
    # The batch is a trace of its own, linked to the span that produced its records.
    assert batch.service == "chatplane-persistence"
    assert batch.trace_id != TRACE_ID
    assert (TRACE_ID, producer.span_id) in batch.links
    # No span carries the message text.
    assert not [s for s in observed.spans if CANARY in json.dumps(s.attributes)]


async def test_metrics_moved_with_the_right_bounded_labels(observed: ObservedChat) -> None:
    stack = observed.stack
    # A second user spends their rate-limit burst (20) on cheap calls: one rejection.
    client = Client(
        grpc.aio.insecure_channel(stack.info().address("gateway")),
        await create_key(stack, observed.tenant, unique("burst")),
    )
    codes = []
    for _ in range(21):
        try:
            await client.stub.ListConversations(
                gateway_pb2.ListConversationsRequest(), metadata=client.metadata, timeout=5
            )
            codes.append("OK")
        except grpc.aio.AioRpcError as error:
            codes.append(error.code().name)
    assert codes[-1] == "RESOURCE_EXHAUSTED"

    model = "chatplane-offline-1"
    gateway = await scrape(stack, "gateway")
    chat = {"service": "gateway", "method": "GatewayService/Chat", "code": "OK"}
    assert value(gateway, "chatplane_rpc_server_duration_seconds_count", **chat) >= 1
    assert value(gateway, "chatplane_active_streams", method="GatewayService/Chat") == 0
    assert value(gateway, "chatplane_gateway_time_to_first_token_seconds_count", model=model) >= 1
    assert value(gateway, "chatplane_gateway_inter_token_seconds_count", model=model) >= 1
    assert value(gateway, "chatplane_gateway_token_relay_lag_seconds_count", model=model) >= 1
    assert value(gateway, "chatplane_gateway_rejections_total", reason="rate_limit") >= 1
    assert value(gateway, "chatplane_gateway_rejections_total", reason="quota") == 0
    limited = {"method": "GatewayService/ListConversations", "code": "RESOURCE_EXHAUSTED"}
    assert value(gateway, "chatplane_rpc_server_duration_seconds_count", **limited) >= 1

    agent = await scrape(stack, "agent")
    assert observed.turn.usage is not None
    tokens = {"tenant": observed.tenant, "model": model}
    assert value(agent, "chatplane_agent_tokens_total", direction="output", **tokens) == (
        observed.turn.usage.usage.output_tokens
    )
    assert value(agent, "chatplane_agent_tokens_total", direction="input", **tokens) > 0
    ok_append = {"topic": "chatplane.messages", "outcome": "ok"}
    assert value(agent, "chatplane_log_append_duration_seconds_count", **ok_append) >= 1
    assert value(agent, "chatplane_llm_attempt_duration_seconds_count", outcome="ok") >= 1
    assert value(agent, "chatplane_llm_circuit_state", provider=model) == 0  # closed

    memory = await scrape(stack, "memory")
    assert value(memory, "chatplane_memory_recall_duration_seconds_count") >= 1
    recall = {"method": "MemoryService/Recall", "code": "OK"}
    assert value(memory, "chatplane_rpc_server_duration_seconds_count", **recall) >= 1

    async def stored() -> list[Sample] | None:
        samples = await scrape(stack, "persistence")
        done = value(samples, "chatplane_persistence_records_total", outcome="stored") >= 2
        lag = value(samples, "chatplane_log_consumer_lag_records", group="chatplane-persistence")
        return samples if done and lag == 0 else None

    persistence = await poll(stored, timeout=10)
    assert value(persistence, "chatplane_persistence_batch_records_count") >= 1
    assert value(persistence, "chatplane_persistence_db_batch_duration_seconds_count") >= 1

    # Bounded labels: no user, conversation or message id anywhere.
    assert observed.turn.started is not None
    started = observed.turn.started.started
    forbidden = {
        observed.user,
        started.conversation_id,
        started.user_message_id,
        started.assistant_message_id,
    }
    for samples in (gateway, agent, memory, persistence):
        for sample in samples:
            assert not forbidden & set(sample.labels.values()), sample


def _log_lines(stack: Stack) -> dict[str, list[str]]:
    logs = Path(stack.info().data_dir) / "logs"
    return {path.stem: path.read_text().splitlines() for path in sorted(logs.glob("*.log"))}


async def test_logs_are_json_with_the_chat_ids_and_never_its_text(observed: ObservedChat) -> None:
    async def all_services_logged_the_trace() -> dict[str, list[str]] | None:
        lines = _log_lines(observed.stack)
        with_trace = {s for s, ls in lines.items() if any(TRACE_ID in line for line in ls)}
        return lines if with_trace >= {"gateway", "agent", "memory", "persistence"} else None

    lines = await poll(all_services_logged_the_trace, timeout=10)
    for service, service_lines in lines.items():
        assert service_lines, service
        for line in service_lines:
            assert CANARY not in line, f"message text in the {service} log: {line}"
            record = json.loads(line)
            for key in ("timestamp", "level", "service", "request_id", "trace_id", "tenant"):
                assert key in record, (key, line)
            assert record["service"] == service
    chat_lines = [json.loads(line) for line in lines["gateway"] if TRACE_ID in line]
    finished = [r for r in chat_lines if r.get("method") == "GatewayService/Chat"]
    assert finished, chat_lines
    assert finished[0]["tenant"] == observed.tenant
    assert finished[0]["request_id"]
    # The Agent's lines for this turn carry the Gateway's request id and the tenant.
    agent_lines = [json.loads(line) for line in lines["agent"] if TRACE_ID in line]
    assert {r["request_id"] for r in agent_lines} == {finished[0]["request_id"]}
    assert {r["tenant"] for r in agent_lines} == {observed.tenant}


async def chatplane_status(data_dir: str) -> str:
    """What `chatplane status` prints for a stack's data dir on a 160-column terminal."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from chatplane.cli.main import main; main()",
        "--data-dir",
        data_dir,
        "status",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "160"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_status_summarises_the_running_stack(observed: ObservedChat) -> None:
    screen = await chatplane_status(observed.stack.info().data_dir)
    for service in ("gateway", "agent", "memory", "persistence"):
        row = next(line for line in screen.splitlines() if f" {service} " in line)
        assert "SERVING" in row, screen
    # One chat was streamed: TTFT percentiles are numbers, tokens were counted.
    assert "TTFT p50 " in screen and "TTFT p50 -" not in screen, screen
    assert "tokens in 0 " not in screen, screen
    assert "consumer lag 0 records" in screen, screen


async def test_every_metric_of_the_alerts_and_the_dashboard_is_exported(
    observed: ObservedChat,
) -> None:
    exported = {
        sample.name
        for service in ("gateway", "agent", "memory", "persistence")
        for sample in await scrape(observed.stack, service)
    }
    used = metric_names(rule_expressions() + panel_expressions())
    assert used, "no metric names found in ops/"
    assert used - exported == set()


async def test_with_tracing_off_every_services_log_still_has_the_callers_trace_id(
    tmp_path: Path,
) -> None:
    trace_id = "0123456789abcdef0123456789abcdef"
    async with running_stack(tmp_path, dict(FAST_PACE)) as stack:
        key = await create_key(stack, unique("tenant"), unique("user"))
        async with grpc.aio.insecure_channel(stack.info().address("gateway")) as channel:
            call = gateway_pb2_grpc.GatewayServiceStub(channel).Chat(
                gateway_pb2.ChatRequest(text=f"hello {CANARY}"),
                metadata=(
                    ("authorization", f"Bearer {key}"),
                    ("traceparent", f"00-{trace_id}-0123456789abcdef-01"),
                ),
                timeout=60,
            )
            kinds = [event.WhichOneof("event") async for event in call]
        assert kinds[-1] == "done"

        async def logged() -> dict[str, list[str]] | None:
            lines = _log_lines(stack)
            with_trace = {s for s, ls in lines.items() if any(trace_id in line for line in ls)}
            return lines if with_trace >= {"gateway", "agent", "memory", "persistence"} else None

        lines = await poll(logged, timeout=10)
        assert not [line for ls in lines.values() for line in ls if CANARY in line]
        assert not (Path(stack.info().data_dir) / "traces").exists()
        # No SDK was installed in any process.
        assert not [line for ls in lines.values() for line in ls if '"tracing on"' in line]


async def test_on_mutual_tls_calls_are_traced_and_status_uses_the_client_certificate(
    tmp_path: Path,
) -> None:
    certs = tmp_path / "tls"
    init_certificates(certs, days=2)
    env = {**FAST_PACE, "CHATPLANE_TRACE_EXPORTER": "file"}
    async with running_stack(tmp_path / "data", env, tls_dir=certs) as stack:
        key = await create_key(stack, unique("t"), unique("u"))
        async with stack.channel("gateway") as channel:
            call = gateway_pb2_grpc.GatewayServiceStub(channel).Chat(
                gateway_pb2.ChatRequest(text="hello over mTLS"),
                metadata=(
                    ("authorization", f"Bearer {key}"),
                    ("traceparent", CALLER_TRACEPARENT),
                ),
                timeout=60,
            )
            kinds = [event.WhichOneof("event") async for event in call]
        assert kinds[-1] == "done"
        screen = await chatplane_status(str(stack.data_dir))
        assert screen.count("SERVING") == 4, screen
    # Stopping flushed every process's spans to <data dir>/traces/<service>.jsonl.
    spans = [
        json.loads(line)
        for path in (stack.data_dir / "traces").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    services = {
        s["resource"]["attributes"]["service.name"]
        for s in spans
        if s["context"]["trace_id"] == f"0x{TRACE_ID}"
    }
    assert services == {f"chatplane-{name}" for name in SERVICES}

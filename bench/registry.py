"""Variant registry benchmark (docs/registry.md), embedded profile: what an Agent's poll of
the deployment costs (GetVariantDeployment with the current revision), and how long a
promotion takes to reach the answers (PromoteRegistryVariant returned → a turn records the
new version) with the default 1 s poll."""

from __future__ import annotations

import time

from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane.internal.v1 import variant_registry_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, registry_pb2

NAME = "registry"
TITLE = "registry: the Agents' poll and promotion to answers (embedded profile, loopback)"
P50, P99 = "p50", "p99"
STACK_ENV = {
    "CHATPLANE_LLM_BACKEND": "offline",
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "500",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.02",
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "1000000",
    "CHATPLANE_RATE_LIMIT_BURST": "100000",
}
NOTES = (
    "poll = GetVariantDeployment with the revision the caller has (the answer is the revision "
    "alone), one client on loopback: what each Agent does every CHATPLANE_REGISTRY_POLL_SECONDS",
    "promotion → answers = PromoteRegistryVariant returned → the first turn whose `started` "
    "names the new version (turns sent back to back, ~50 ms each); bounded by the 1 s poll",
    "percentiles are nearest-rank; on the shared 2-core machine p99 follows the load",
)


def _row(metric: str, samples: list[int], target: Target) -> Row:
    return Row(
        NAME,
        metric,
        "ms",
        {P50: ns_to_ms(percentile(samples, 0.5)), P99: ns_to_ms(percentile(samples, 0.99))},
        target,
    )


async def run(options: Options) -> list[Row]:
    """Both measurements on one stack."""
    polls = 50 if options.quick else 500
    promotions = 3 if options.quick else 10
    async with running_stack(NAME, STACK_ENV, options) as stack:
        (user_key,) = await create_keys(stack, [("bench", "u")])
        metadata = (("authorization", f"Bearer {user_key}"),)
        internal = await user_channel(stack.info().address("persistence"))
        gateway_channel = await user_channel(stack.info().address("gateway"))
        try:
            persistence = PersistenceClient(internal)
            gateway = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
            for temperature in (0.1, 0.2):
                await persistence.registry.PushVariant(
                    variant_registry_pb2.PushVariantRequest(
                        request=registry_pb2.PushVariantRequest(
                            spec=f"name: bench\nbackend: offline\ntemperature: {temperature}"
                        ),
                        actor="bench",
                    ),
                    timeout=10,
                )
            reach: list[int] = []
            for index in range(promotions):
                target = f"bench@{1 + index % 2}"
                await persistence.registry.PromoteVariant(
                    variant_registry_pb2.PromoteVariantRequest(
                        request=registry_pb2.PromoteVariantRequest(variant=target), actor="bench"
                    ),
                    timeout=10,
                )
                began = time.perf_counter_ns()
                while True:
                    variant = ""
                    async for event in gateway.Chat(
                        gateway_pb2.ChatRequest(text="hi"), metadata=metadata, timeout=30
                    ):
                        if event.WhichOneof("event") == "started":
                            variant = event.started.variant
                    if variant == target:
                        break
                reach.append(time.perf_counter_ns() - began)
            progress(options, f"{NAME}: promotions measured")
            request = variant_registry_pb2.GetVariantDeploymentRequest()
            current = await persistence.registry.GetVariantDeployment(request, timeout=10)
            request.known_revision = current.deployment.revision
            poll: list[int] = []
            for _ in range(polls):
                began = time.perf_counter_ns()
                await persistence.registry.GetVariantDeployment(request, timeout=10)
                poll.append(time.perf_counter_ns() - began)
            progress(options, f"{NAME}: polls measured")
        finally:
            await internal.close()
            await gateway_channel.close()
    return [
        _row("poll of the deployment (unchanged)", poll, Target(5.0, P50)),
        _row("promotion → first answer on the new version", reach, Target(5000.0, P99)),
    ]

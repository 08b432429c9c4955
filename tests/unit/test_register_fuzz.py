"""Fuzz the Register handler in-process: no input crashes it or leaves state behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from connectrpc.errors import ConnectError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.registry.register import RegisterService
from flowwatch_gateway.serving.app import register_service_for

KEY = "fuzz-key"
texts = st.one_of(
    st.sampled_from(["", "orders", "orders-1", "a" * 64, "x,y", "é", "bad id", "-x"]),
    st.text(max_size=80),
)
endpoints = st.one_of(
    st.sampled_from(
        [
            "",
            "http://127.0.0.1:9/f",
            "http://127.0.0.1:18091",
            "http://169.254.169.254/",
            "http://[::ffff:169.254.169.254]/",
            "http://metadata.google.internal/",
            "ftp://x",
            "http://[::1",
            "https://10.0.0.1:99999",
        ]
    ),
    st.text(max_size=40),
)
register_requests = st.builds(
    gateway_service_pb2.RegisterRequest,
    subsystem_id=texts,
    subsystem_name=texts,
    description=st.text(max_size=50),
    api_key=st.sampled_from([KEY, "", "wrong"]),
    flowwatch_endpoint=endpoints,
    workflows=st.lists(
        st.builds(types_pb2.WorkflowDefinition, id=texts, subsystem_id=texts), max_size=3
    ),
    metadata=st.dictionaries(texts, texts, max_size=3),
)
valid_requests = st.builds(
    gateway_service_pb2.RegisterRequest,
    subsystem_id=st.sampled_from(["orders", "billing"]),
    api_key=st.just(KEY),
    flowwatch_endpoint=st.sampled_from(["http://127.0.0.1:9/a", "http://127.0.0.1:10/b"]),
)
messages = st.one_of(
    st.builds(gateway_service_pb2.SubsystemMessage, register=register_requests),
    st.builds(gateway_service_pb2.SubsystemMessage, register=valid_requests),
    st.just(gateway_service_pb2.SubsystemMessage(pong=gateway_service_pb2.Heartbeat())),
    st.just(gateway_service_pb2.SubsystemMessage()),
)


async def run_stream(
    service: RegisterService, sequence: list[gateway_service_pb2.SubsystemMessage]
) -> tuple[list[gateway_service_pb2.GatewayMessage], BaseException | None]:
    async def requests() -> AsyncIterator[gateway_service_pb2.SubsystemMessage]:
        for message in sequence:
            yield message
            await asyncio.sleep(0)

    received: list[gateway_service_pb2.GatewayMessage] = []
    try:
        async with asyncio.timeout(5):
            async for message in service.register(requests(), cast(Any, None)):
                received.append(message)
    except ConnectError as exc:
        return received, exc
    return received, None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(messages, max_size=4), min_size=1, max_size=3))
def test_no_input_crashes_register_or_leaves_state_behind(
    streams: list[list[gateway_service_pb2.SubsystemMessage]],
) -> None:
    async def scenario() -> None:
        registry = InMemoryRegistry()
        config = GatewayConfig(host="127.0.0.1", port=18091, api_key=KEY, heartbeat=0.05)
        service = register_service_for(config, registry)
        registry.add_listener(service)
        accepted: set[str] = set()
        for sequence in streams:
            received, error = await run_stream(service, sequence)
            ok = [m for m in received if m.WhichOneof("msg") == "registered"]
            if ok and ok[0].registered.accepted:
                accepted.add(sequence[0].register.subsystem_id)
            else:
                # Refused: only ConnectErrors (never TimeoutError or anything else).
                assert error is not None or not sequence
        # Refused registrations left nothing; accepted ones ended stale; no stream open.
        assert {instance.id for instance in registry.instances()} <= accepted
        assert registry.connected() == []
        assert service.open_streams == 0

    asyncio.run(scenario())

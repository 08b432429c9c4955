"""/metrics shows self-preservation and, with replicas, whether Redis answers."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from flowwatch_gateway.registry.base import SystemClock
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.serving.metrics import GatewayMetrics
from flowwatch_gateway.serving.status import UpstreamHealth


def _scrape(metrics: GatewayMetrics) -> dict[str, float]:
    _, body = metrics.exposition()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_self_preservation_and_the_redis_link_are_scraped_as_they_are_now() -> None:
    registry = InMemoryRegistry()
    metrics = GatewayMetrics(registry, UpstreamHealth(registry, SystemClock()))
    state = {"preserving": False, "redis": True}
    metrics.watch_registry_health(
        self_preserving=lambda: state["preserving"], shared_up=lambda: state["redis"]
    )
    before = _scrape(metrics)
    assert before["flowwatch_gateway_self_preservation"] == 0
    assert before["flowwatch_gateway_shared_registry_up"] == 1

    state.update(preserving=True, redis=False)
    after = _scrape(metrics)
    assert after["flowwatch_gateway_self_preservation"] == 1
    assert after["flowwatch_gateway_shared_registry_up"] == 0


def test_one_replica_has_no_shared_registry_gauge() -> None:
    registry = InMemoryRegistry()
    metrics = GatewayMetrics(registry, UpstreamHealth(registry, SystemClock()))
    metrics.watch_registry_health(self_preserving=lambda: False, shared_up=None)
    assert "flowwatch_gateway_shared_registry_up" not in _scrape(metrics)

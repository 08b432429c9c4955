"""Prometheus metrics of one gateway app (`GET /metrics`).

Each app has its own CollectorRegistry (not prometheus-client's global one), so
tests that build several apps in one process never collide. Counters and
histograms are updated where things happen (the Register handler, the upstream
interceptor, the API-call middleware in observe.py); what the registry and the
run-owner cache hold is read at scrape time by a custom collector, so it is never
out of step and costs nothing between scrapes.

Label cardinality stays bounded with 1,000+ subsystems: no label ever carries a
subsystem id. `rpc` is one of the FlowWatch API's method names, `code` one of the
Connect codes, `state` connected/stale, `result` accepted or one of
REJECTION_LABELS (registry/register.py) for registrations, ok or a Connect code for
actions. Per-subsystem detail is on the status page and in the logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Generic, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from flowwatch_gateway.proxy.owners import RunOwnerCache
from flowwatch_gateway.registry.base import Registry
from flowwatch_gateway.registry.register import REJECTION_LABELS
from flowwatch_gateway.serving.observe import error_code
from flowwatch_gateway.serving.status import UpstreamHealth

__all__ = ["GatewayMetrics", "gateway_version"]

PREFIX = "flowwatch_gateway"

# Pong round trips: loopback is sub-millisecond, a congested WAN link seconds.
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Upstream calls: bounded by GATEWAY_UPSTREAM_TIMEOUT (5 s by default).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Subsystems one API call reached: one (routed) up to every registered one.
WIDTH_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def gateway_version() -> str:
    try:
        return version("flowwatch-gateway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class _StateCollector(Collector):
    """Scrape-time gauges: subsystems by state, reachability, the run-owner cache."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        by_state = {"connected": 0, "stale": 0}
        for instance in metrics.registry.instances():
            by_state[instance.state.value] += 1
        subsystems = GaugeMetricFamily(
            f"{PREFIX}_subsystems", "Registered subsystems by state.", labels=["state"]
        )
        for state, count in by_state.items():
            subsystems.add_metric([state], count)
        yield subsystems
        yield GaugeMetricFamily(
            f"{PREFIX}_subsystems_unreachable",
            "Connected subsystems whose FlowWatch API did not answer the last call "
            "(heartbeats arrive, calls fail: discovery or proxying is failing).",
            value=metrics.health.unreachable_count(),
        )
        owners = metrics.owners
        if owners is not None:
            yield CounterMetricFamily(
                f"{PREFIX}_run_owner_cache_hits",
                "Run-owner lookups answered from the cache.",
                value=owners.hits,
            )
            yield CounterMetricFamily(
                f"{PREFIX}_run_owner_cache_misses",
                "Run-owner lookups the cache could not answer (every subsystem is asked).",
                value=owners.misses,
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_run_owner_cache_size", "Entries in the run-owner cache.", len(owners)
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_run_owner_cache_capacity",
                "Most entries the run-owner cache keeps (GATEWAY_RUN_CACHE_SIZE).",
                owners.capacity,
            )
        if metrics.shared_registry_up is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_shared_registry_up",
                "1 while the Redis holding the replicas' shared registry answers; 0 while "
                "this replica serves from its last view (GATEWAY_REDIS_URL).",
                value=int(metrics.shared_registry_up()),
            )
        if metrics.self_preserving is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_self_preservation",
                "1 while removals are suspended because many subsystems went stale at once "
                "(GATEWAY_SELF_PRESERVATION).",
                value=int(metrics.self_preserving()),
            )
        info = GaugeMetricFamily(
            f"{PREFIX}_build_info", "Always 1; the version is the label.", labels=["version"]
        )
        info.add_metric([metrics.version], 1)
        yield info
        yield GaugeMetricFamily(
            f"{PREFIX}_start_time_seconds",
            "When this gateway process started (Unix time).",
            metrics.started_at,
        )


_M = TypeVar("_M", bound=MetricWrapperBase)


class _Children(Generic[_M]):
    """A labelled metric's children by label values, each looked up once (few label sets)."""

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *labels: str) -> _M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class GatewayMetrics:
    """Every metric of one gateway app, and the hooks that update them.

    It is the RegisterService's observer (registration results, heartbeat RTT), the
    sink of observe.py's API-call middleware (partial failures, fan-out width), of
    its upstream interceptor (upstream durations; failures go on to UpstreamHealth)
    and of the audit trail (actions by rpc and result).
    """

    def __init__(self, registry: Registry, health: UpstreamHealth) -> None:
        self.registry = registry
        self.health = health
        self.owners: RunOwnerCache | None = None
        self.shared_registry_up: Callable[[], bool] | None = None
        self.self_preserving: Callable[[], bool] | None = None
        self.version = gateway_version()
        self.started_at = time.time()
        self.collectors = CollectorRegistry(auto_describe=True)
        self.registrations = Counter(
            f"{PREFIX}_registrations",
            "Register attempts by result: accepted, or the reason they were refused.",
            ["result"],
            registry=self.collectors,
        )
        for result in ("accepted", *REJECTION_LABELS):
            self.registrations.labels(result)  # exported at 0, so rate() works from the start
        self.heartbeat_rtt = Histogram(
            f"{PREFIX}_heartbeat_rtt_seconds",
            "Time from a ping sent on a Register stream to its pong arriving.",
            buckets=RTT_BUCKETS,
            registry=self.collectors,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Unary calls from the gateway to one subsystem, by rpc and Connect code "
            "(ok when it succeeded; canceled when another subsystem answered first).",
            ["rpc", "code"],
            buckets=DURATION_BUCKETS,
            registry=self.collectors,
        )
        self.partial_failures = Counter(
            f"{PREFIX}_partial_failures",
            "API calls answered with at least one subsystem missing (failed or stale).",
            ["rpc"],
            registry=self.collectors,
        )
        self.fanout_width = Histogram(
            f"{PREFIX}_fanout_width",
            "Subsystems one API call reached.",
            ["rpc"],
            buckets=WIDTH_BUCKETS,
            registry=self.collectors,
        )
        # rpc: an action method name; result: ok or a Connect code (access/audit.py).
        self.actions = Counter(
            f"{PREFIX}_actions",
            "Actions on runs, one per run id (a bulk action counts each), by rpc and "
            "result: ok or the Connect code it was refused or failed with.",
            ["rpc", "result"],
            registry=self.collectors,
        )
        self.collectors.register(_StateCollector(self))
        # Looked up once per label set: labels() costs more than observe() on every call.
        self._timers = _Children(self.upstream_duration)
        self._widths = _Children(self.fanout_width)
        self._actions = _Children(self.actions)

    def watch_owner_cache(self, owners: RunOwnerCache) -> None:
        self.owners = owners

    def watch_registry_health(
        self, *, self_preserving: Callable[[], bool], shared_up: Callable[[], bool] | None
    ) -> None:
        """Scrape-time views of the health monitor and (with replicas) the Redis link."""
        self.self_preserving = self_preserving
        self.shared_registry_up = shared_up

    # --- RegisterService observer ----------------------------------------------------
    def registration(self, result: str) -> None:
        self.registrations.labels(result).inc()

    def heartbeat(self, rtt_seconds: float) -> None:
        self.heartbeat_rtt.observe(rtt_seconds)

    # --- observe.CallSink ------------------------------------------------------------
    def partial_failure(self, rpc: str) -> None:
        self.partial_failures.labels(rpc).inc()

    def fanned_out(self, rpc: str, width: int) -> None:
        self._widths(rpc).observe(width)

    # --- access.audit.ActionSink ----------------------------------------------------
    def action(self, rpc: str, result: str) -> None:
        self._actions(rpc, result).inc()

    # --- observe.UpstreamSink --------------------------------------------------------
    def upstream_call(
        self,
        subsystem_id: str,
        rpc: str,
        error: Exception | None,
        seconds: float,
        *,
        unary: bool,
    ) -> None:
        # A stream's duration is how long someone watched, not latency: not timed.
        if unary:
            self._timers(rpc, error_code(error)).observe(seconds)
        self.health.record(subsystem_id, rpc, error)

    # --- exposition ------------------------------------------------------------------
    def exposition(self) -> tuple[str, bytes]:
        """(content type, body) of a scrape in the Prometheus text format."""
        return CONTENT_TYPE_LATEST, generate_latest(self.collectors)

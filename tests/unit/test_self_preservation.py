"""Self-preservation: many subsystems going stale at once suspends removals."""

from __future__ import annotations

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2
from flowwatch_gateway.registry.health import HealthMonitor, SelfPreservation
from flowwatch_gateway.registry.memory import InMemoryRegistry
from tests.support.harness import FakeClock

HEARTBEAT = 1.0
GRACE = 5.0


def _fleet(count: int) -> tuple[InMemoryRegistry, FakeClock, HealthMonitor]:
    clock = FakeClock()
    registry = InMemoryRegistry(clock)
    for index in range(count):
        registry.register(
            gateway_service_pb2.RegisterRequest(
                subsystem_id=f"s{index:02d}", flowwatch_endpoint=f"http://s{index:02d}:8080"
            )
        )
    monitor = HealthMonitor(
        registry,
        heartbeat=HEARTBEAT,
        grace_period=GRACE,
        self_preservation=SelfPreservation(0.15),
        clock=clock,
    )
    return registry, clock, monitor


def _kill(registry: InMemoryRegistry, ids: list[str]) -> None:
    for subsystem_id in ids:
        instance = registry.get(subsystem_id)
        assert instance is not None
        registry.mark_stale(subsystem_id, instance.epoch)


def _beat(registry: InMemoryRegistry) -> None:
    """Every connected subsystem answers its pings."""
    for instance in registry.connected():
        registry.record_heartbeat(instance.id, instance.epoch)


def test_a_few_dead_subsystems_are_removed_after_the_grace_period() -> None:
    registry, clock, monitor = _fleet(20)
    _kill(registry, ["s00", "s01"])  # 10%: their own fault
    monitor.sweep()
    clock.advance(GRACE + 1)
    _beat(registry)
    monitor.sweep()
    assert not monitor.self_preservation.active
    assert registry.get("s00") is None and registry.get("s01") is None


def test_a_large_share_going_stale_together_is_kept_listed_until_most_are_back() -> None:
    registry, clock, monitor = _fleet(20)
    lost = [f"s{index:02d}" for index in range(6)]  # 30% at once: the gateway's network
    _kill(registry, lost)

    monitor.sweep()
    assert monitor.self_preservation.active
    assert "6 of 20" in monitor.self_preservation.reason
    for _ in range(10):
        clock.advance(GRACE)
        _beat(registry)
        monitor.sweep()
    assert all(registry.get(i) is not None for i in lost)  # listed as stale, not removed
    assert len(registry.connected()) == 14

    for subsystem_id in lost[:4]:  # most come back (their streams re-register)
        registry.register(
            gateway_service_pb2.RegisterRequest(
                subsystem_id=subsystem_id, flowwatch_endpoint=f"http://{subsystem_id}:8080"
            )
        )
    monitor.sweep()  # 2 of 20 stale: removals resume
    assert not monitor.self_preservation.active
    assert registry.get("s04") is None and registry.get("s05") is None
    assert registry.get("s00") is not None


def test_three_subsystems_one_dead_is_just_one_dead_subsystem() -> None:
    registry, clock, monitor = _fleet(3)
    _kill(registry, ["s00"])
    monitor.sweep()
    assert not monitor.self_preservation.active
    clock.advance(GRACE + 1)
    _beat(registry)
    monitor.sweep()
    assert registry.get("s00") is None


def test_zero_turns_it_off() -> None:
    guard = SelfPreservation(0)
    registry, _, _ = _fleet(10)
    _kill(registry, [f"s{index:02d}" for index in range(8)])
    assert not guard.assess(registry.instances(), 1000.0, 2.0)

"""The registry state machine and the health sweep, driven by a fake clock."""

from __future__ import annotations

import pytest

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.registry.base import Registry, SubsystemInstance, SubsystemState
from flowwatch_gateway.registry.health import HealthMonitor
from flowwatch_gateway.registry.memory import InMemoryRegistry
from tests.support.harness import FakeClock


def request(
    subsystem_id: str, *workflow_ids: str, capabilities: types_pb2.Capabilities | None = None
) -> gateway_service_pb2.RegisterRequest:
    req = gateway_service_pb2.RegisterRequest(
        subsystem_id=subsystem_id,
        subsystem_name=f"{subsystem_id} name",
        flowwatch_endpoint=f"http://{subsystem_id}:8080",
        metadata={"region": "eu"},
        workflows=[types_pb2.WorkflowDefinition(id=w, name=w) for w in workflow_ids],
    )
    if capabilities is not None:
        req.capabilities.CopyFrom(capabilities)
    return req


class RecordingListener:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        self.events.append(("registered", instance.id, instance.epoch))

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        self.events.append(("removed", instance.id, instance.epoch))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return InMemoryRegistry(clock)


def test_register_records_the_announcement(registry: Registry, clock: FakeClock) -> None:
    caps = types_pb2.Capabilities(retry_run=True)
    instance = registry.register(request("orders", "checkout", capabilities=caps))
    assert instance.state is SubsystemState.CONNECTED
    assert (instance.name, instance.endpoint) == ("orders name", "http://orders:8080")
    assert instance.metadata == {"region": "eu"}
    assert instance.registered_at == clock.now() == instance.last_heartbeat
    assert [w.subsystem_id for w in instance.workflows] == ["orders"]
    assert instance.capabilities == caps
    assert instance.request.subsystem_id == "orders"
    assert registry.get("orders") is instance
    assert registry.workflow_owners("checkout") == ["orders"]


def test_missing_capabilities_stay_unknown(registry: Registry) -> None:
    assert registry.register(request("orders")).capabilities is None


def test_each_registration_gets_a_new_epoch_and_replaces_the_old(registry: Registry) -> None:
    first = registry.register(request("orders", "a"))
    second = registry.register(request("orders", "b"))
    assert second.epoch > first.epoch
    assert registry.instances() == [second]
    assert registry.workflow_owners("a") == []
    assert registry.workflow_owners("b") == ["orders"]


def test_an_old_epoch_cannot_touch_the_new_registration(registry: Registry) -> None:
    old = registry.register(request("orders"))
    new = registry.register(request("orders"))
    assert not registry.mark_stale("orders", old.epoch)
    assert not registry.record_heartbeat("orders", old.epoch)
    assert registry.deregister("orders", old.epoch) is None
    assert not registry.update_discovery("orders", old.epoch, workflows=[])
    assert registry.get("orders") is new
    assert new.state is SubsystemState.CONNECTED


def test_stale_and_back(registry: Registry, clock: FakeClock) -> None:
    instance = registry.register(request("orders"))
    clock.advance(1)
    assert registry.mark_stale("orders", instance.epoch)
    assert not registry.mark_stale("orders", instance.epoch)  # already stale
    assert instance.state is SubsystemState.STALE
    assert instance.stale_since == clock.now()
    assert registry.connected() == []
    assert registry.instances() == [instance]  # stale is kept, not removed
    clock.advance(1)
    assert registry.record_heartbeat("orders", instance.epoch)
    assert instance.connected
    assert instance.stale_since is None
    assert instance.last_heartbeat == clock.now()


def test_reregistering_a_stale_subsystem_restores_it(registry: Registry) -> None:
    old = registry.register(request("orders"))
    registry.mark_stale("orders", old.epoch)
    new = registry.register(request("orders"))
    assert new.state is SubsystemState.CONNECTED
    assert registry.connected() == [new]


def test_expire_makes_silent_ones_stale_then_removes_them(
    registry: Registry, clock: FakeClock
) -> None:
    quiet = registry.register(request("quiet"))
    chatty = registry.register(request("chatty"))
    clock.advance(1.5)
    registry.record_heartbeat("chatty", chatty.epoch)
    clock.advance(0.6)  # quiet: 2.1 s silent; chatty: 0.6 s
    result = registry.expire(stale_after=2.0, remove_after=5.0)
    assert [i.id for i in result.went_stale] == ["quiet"]
    assert result.removed == []
    assert quiet.state is SubsystemState.STALE
    clock.advance(4.9)
    registry.record_heartbeat("chatty", chatty.epoch)
    assert registry.expire(stale_after=2.0, remove_after=5.0).removed == []
    clock.advance(0.1)
    result = registry.expire(stale_after=2.0, remove_after=5.0)
    assert [i.id for i in result.removed] == ["quiet"]
    assert registry.get("quiet") is None
    assert registry.get("chatty") is chatty


def test_expire_does_not_remove_within_the_same_sweep_it_went_stale(
    registry: Registry, clock: FakeClock
) -> None:
    registry.register(request("orders"))
    clock.advance(10)
    result = registry.expire(stale_after=2.0, remove_after=0.0)
    assert [i.id for i in result.went_stale] == ["orders"]
    assert result.removed == []
    assert [i.id for i in registry.expire(stale_after=2.0, remove_after=0.0).removed] == ["orders"]


def test_listeners_hear_registrations_and_final_removal(
    registry: Registry, clock: FakeClock
) -> None:
    listener = RecordingListener()
    registry.add_listener(listener)
    first = registry.register(request("orders"))
    second = registry.register(request("orders"))
    registry.mark_stale("orders", second.epoch)
    clock.advance(100)
    registry.expire(stale_after=1, remove_after=1)
    assert listener.events == [
        ("registered", "orders", first.epoch),
        ("registered", "orders", second.epoch),
        ("removed", "orders", second.epoch),
    ]


def test_a_failing_listener_does_not_break_the_registry(registry: Registry) -> None:
    class Broken(RecordingListener):
        def subsystem_registered(self, instance: SubsystemInstance) -> None:
            raise RuntimeError("boom")

    recording = RecordingListener()
    registry.add_listener(Broken())
    registry.add_listener(recording)
    registry.register(request("orders"))
    assert recording.events == [("registered", "orders", 1)]


def test_workflow_index_follows_register_update_and_remove(registry: Registry) -> None:
    a = registry.register(request("a", "shared", "only-a"))
    registry.register(request("b", "shared"))
    assert registry.workflow_owners("shared") == ["a", "b"]
    assert registry.update_discovery(
        "a", a.epoch, workflows=[types_pb2.WorkflowDefinition(id="new-a")]
    )
    assert registry.workflow_owners("shared") == ["b"]
    assert registry.workflow_owners("only-a") == []
    assert registry.workflow_owners("new-a") == ["a"]
    registry.deregister("b")
    assert registry.workflow_owners("shared") == []


def test_update_discovery_fills_capabilities(registry: Registry) -> None:
    instance = registry.register(request("orders"))
    caps = types_pb2.Capabilities(cancel_run=True)
    assert registry.update_discovery("orders", instance.epoch, capabilities=caps)
    assert instance.capabilities == caps
    caps.cancel_run = False  # the registry keeps its own copy
    assert instance.capabilities.cancel_run


def test_health_monitor_uses_two_heartbeats_and_the_grace_period(
    registry: Registry, clock: FakeClock
) -> None:
    monitor = HealthMonitor(registry, heartbeat=1.0, grace_period=3.0)
    assert monitor.check_interval == 0.5
    registry.register(request("orders"))
    clock.advance(2.0)
    assert monitor.sweep().went_stale == []
    clock.advance(0.5)
    assert [i.id for i in monitor.sweep().went_stale] == ["orders"]
    clock.advance(2.5)
    assert monitor.sweep().removed == []
    clock.advance(0.5)
    assert [i.id for i in monitor.sweep().removed] == ["orders"]

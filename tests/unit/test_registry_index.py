"""The registry's workflow index is kept incrementally; it must equal a full rebuild."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.registry.base import Registry
from flowwatch_gateway.registry.memory import InMemoryRegistry
from tests.support.harness import FakeClock

SUBSYSTEM_IDS = ("a", "b", "c", "d", "e")
WORKFLOW_IDS = ("w1", "w2", "w3", "w4", "w5", "w6")

workflow_lists = st.lists(st.sampled_from(WORKFLOW_IDS), max_size=5)  # duplicates included
operations = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.sampled_from(SUBSYSTEM_IDS), workflow_lists),
        st.tuples(st.just("update"), st.sampled_from(SUBSYSTEM_IDS), workflow_lists),
        st.tuples(st.just("deregister"), st.sampled_from(SUBSYSTEM_IDS), st.just([])),
        st.tuples(st.just("expire"), st.sampled_from(SUBSYSTEM_IDS), st.just([])),
    ),
    max_size=40,
)


def rebuilt_index(registry: Registry) -> dict[str, list[str]]:
    """The index computed from scratch over every instance, as the registry used to."""
    owners: dict[str, list[str]] = {}
    for instance in registry.instances():
        for workflow in instance.workflows:
            ids = owners.setdefault(workflow.id, [])
            if instance.id not in ids:
                ids.append(instance.id)
    return owners


def definitions(workflow_ids: list[str]) -> list[types_pb2.WorkflowDefinition]:
    return [types_pb2.WorkflowDefinition(id=w, name=w) for w in workflow_ids]


@settings(max_examples=300, deadline=None)
@given(operations)
def test_incremental_index_equals_a_rebuild(ops: list[tuple[str, str, list[str]]]) -> None:
    clock = FakeClock()
    registry = InMemoryRegistry(clock)
    for kind, subsystem_id, workflow_ids in ops:
        current = registry.get(subsystem_id)
        if kind == "register":
            registry.register(
                gateway_service_pb2.RegisterRequest(
                    subsystem_id=subsystem_id,
                    flowwatch_endpoint=f"http://{subsystem_id}:8080",
                    workflows=definitions(workflow_ids),
                )
            )
        elif kind == "update" and current is not None:
            registry.update_discovery(
                subsystem_id, current.epoch, workflows=definitions(workflow_ids)
            )
        elif kind == "deregister":
            registry.deregister(subsystem_id)
        elif kind == "expire" and current is not None:
            # Removal by the health sweep goes through the same index update.
            registry.mark_stale(subsystem_id, current.epoch)
            clock.advance(10)
            registry.expire(stale_after=5, remove_after=5)
        expected = rebuilt_index(registry)
        for workflow_id in WORKFLOW_IDS:
            assert registry.workflow_owners(workflow_id) == expected.get(workflow_id, [])
    # Nothing is left behind for workflows nobody defines any more.
    assert registry._workflow_owners == rebuilt_index(registry)

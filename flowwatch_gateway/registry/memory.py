"""The in-memory registry: the gateway's subsystem state in one process.

Pure state, no I/O: used from one event loop, so no locking. Time comes from an
injected Clock so the state machine can be tested without sleeping.

The workflow index (workflow id -> sorted owner ids) is kept up to date
incrementally: a registration or removal touches only that subsystem's workflow
ids. Rebuilding it from every instance on each change blocked the loop for
seconds with a thousand subsystems of fifty workflows each.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.registry.base import (
    Clock,
    Expiry,
    RegistryListener,
    SubsystemInstance,
    SubsystemState,
    SystemClock,
)

log = logging.getLogger(__name__)


class InMemoryRegistry:
    """A `Registry` (base.py) in this process. Not thread-safe: use from one event loop."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._instances: dict[str, SubsystemInstance] = {}
        # workflow id -> owner ids, sorted; and what each subsystem is indexed under.
        self._workflow_owners: dict[str, list[str]] = {}
        self._indexed: dict[str, frozenset[str]] = {}
        self._listeners: list[RegistryListener] = []
        self._last_epoch = 0

    # --- listeners -------------------------------------------------------------------
    def add_listener(self, listener: RegistryListener) -> None:
        self._listeners.append(listener)

    def _notify_registered(self, instance: SubsystemInstance) -> None:
        for listener in list(self._listeners):
            try:
                listener.subsystem_registered(instance)
            except Exception:
                log.exception("registry listener failed on register of %s", instance.id)

    def _notify_removed(self, instance: SubsystemInstance) -> None:
        for listener in list(self._listeners):
            try:
                listener.subsystem_removed(instance)
            except Exception:
                log.exception("registry listener failed on removal of %s", instance.id)

    # --- changes ---------------------------------------------------------------------
    def register(self, request: gateway_service_pb2.RegisterRequest) -> SubsystemInstance:
        """Record a (re-)registration; it replaces any earlier one with the same id."""
        self._last_epoch += 1
        now, mono = self._clock.now(), self._clock.monotonic()
        snapshot = gateway_service_pb2.RegisterRequest()
        snapshot.CopyFrom(request)
        snapshot.ClearField("api_key")  # checked already; never kept or logged
        instance = SubsystemInstance(
            id=request.subsystem_id,
            name=request.subsystem_name or request.subsystem_id,
            description=request.description,
            endpoint=request.flowwatch_endpoint,
            metadata=dict(request.metadata),
            workflows=_owned_workflows(request.subsystem_id, request.workflows),
            capabilities=_copy_capabilities(request) if request.HasField("capabilities") else None,
            state=SubsystemState.CONNECTED,
            epoch=self._last_epoch,
            registered_at=now,
            last_heartbeat=now,
            last_heartbeat_monotonic=mono,
            request=snapshot,
        )
        self._instances[instance.id] = instance
        self._reindex(instance.id, instance.workflows)
        self._notify_registered(instance)
        return instance

    def deregister(self, subsystem_id: str, epoch: int | None = None) -> SubsystemInstance | None:
        """Remove a subsystem (only if `epoch` is None or still current); returns it."""
        instance = self._current(subsystem_id, epoch)
        if instance is None:
            return None
        del self._instances[subsystem_id]
        self._reindex(subsystem_id, ())
        self._notify_removed(instance)
        return instance

    def mark_stale(self, subsystem_id: str, epoch: int) -> bool:
        """Mark a connected registration stale; False if it is not current or already stale."""
        instance = self._current(subsystem_id, epoch)
        if instance is None or not instance.connected:
            return False
        instance.state = SubsystemState.STALE
        instance.stale_since = self._clock.now()
        instance.stale_since_monotonic = self._clock.monotonic()
        return True

    def record_heartbeat(self, subsystem_id: str, epoch: int) -> bool:
        """A pong arrived; a stale registration whose stream answers again is connected.

        Returns False when this registration is no longer current (replaced or removed),
        telling the caller to close the stream.
        """
        instance = self._current(subsystem_id, epoch)
        if instance is None:
            return False
        instance.last_heartbeat = self._clock.now()
        instance.last_heartbeat_monotonic = self._clock.monotonic()
        if not instance.connected:
            instance.state = SubsystemState.CONNECTED
            instance.stale_since = None
            instance.stale_since_monotonic = None
        return True

    def update_discovery(
        self,
        subsystem_id: str,
        epoch: int,
        workflows: Iterable[types_pb2.WorkflowDefinition] | None = None,
        capabilities: types_pb2.Capabilities | None = None,
    ) -> bool:
        """Fill in what the subsystem did not announce when it registered.

        Ignored (False) when the registration was replaced meanwhile: the answer would
        describe an old connection.
        """
        instance = self._current(subsystem_id, epoch)
        if instance is None:
            return False
        if workflows is not None:
            instance.workflows = _owned_workflows(subsystem_id, workflows)
            self._reindex(subsystem_id, instance.workflows)
        if capabilities is not None:
            copied = types_pb2.Capabilities()
            copied.CopyFrom(capabilities)
            instance.capabilities = copied
        return True

    def expire(self, *, stale_after: float, remove_after: float) -> Expiry:
        """One health sweep: silent connected ones go stale, long-stale ones are removed.

        `stale_after`: seconds without a heartbeat; `remove_after`: seconds spent stale.
        """
        mono = self._clock.monotonic()
        result = Expiry()
        for instance in list(self._instances.values()):
            if instance.connected:
                if mono - instance.last_heartbeat_monotonic > stale_after:
                    self.mark_stale(instance.id, instance.epoch)
                    result.went_stale.append(instance)
            elif (
                instance.stale_since_monotonic is not None
                and mono - instance.stale_since_monotonic >= remove_after
            ):
                removed = self.deregister(instance.id, instance.epoch)
                if removed is not None:
                    result.removed.append(removed)
        return result

    # --- queries ---------------------------------------------------------------------
    def get(self, subsystem_id: str) -> SubsystemInstance | None:
        return self._instances.get(subsystem_id)

    def instances(self) -> list[SubsystemInstance]:
        """Every known subsystem, connected or stale, ordered by id."""
        return [self._instances[key] for key in sorted(self._instances)]

    def connected(self) -> list[SubsystemInstance]:
        return [instance for instance in self.instances() if instance.connected]

    def is_current(self, subsystem_id: str, epoch: int) -> bool:
        return self._current(subsystem_id, epoch) is not None

    def workflow_owners(self, workflow_id: str) -> list[str]:
        """Ids of the subsystems (connected or stale) that define this workflow, sorted."""
        return list(self._workflow_owners.get(workflow_id, ()))

    # --- internals -------------------------------------------------------------------
    def _current(self, subsystem_id: str, epoch: int | None) -> SubsystemInstance | None:
        instance = self._instances.get(subsystem_id)
        if instance is None or (epoch is not None and instance.epoch != epoch):
            return None
        return instance

    def _reindex(
        self, subsystem_id: str, workflows: Iterable[types_pb2.WorkflowDefinition]
    ) -> None:
        """Make the index list `subsystem_id` under exactly these workflows' ids."""
        before = self._indexed.pop(subsystem_id, frozenset())
        after = frozenset(workflow.id for workflow in workflows)
        if after:
            self._indexed[subsystem_id] = after
        for workflow_id in before - after:
            owners = self._workflow_owners[workflow_id]
            del owners[bisect.bisect_left(owners, subsystem_id)]
            if not owners:
                del self._workflow_owners[workflow_id]
        for workflow_id in after - before:
            bisect.insort(self._workflow_owners.setdefault(workflow_id, []), subsystem_id)


def _owned_workflows(
    subsystem_id: str, workflows: Iterable[types_pb2.WorkflowDefinition]
) -> list[types_pb2.WorkflowDefinition]:
    """Copies of the workflows, each naming its subsystem (announcements often leave it out)."""
    owned = []
    for workflow in workflows:
        copy = types_pb2.WorkflowDefinition()
        copy.CopyFrom(workflow)
        if not copy.subsystem_id:
            copy.subsystem_id = subsystem_id
        owned.append(copy)
    return owned


def _copy_capabilities(request: gateway_service_pb2.RegisterRequest) -> types_pb2.Capabilities:
    copied = types_pb2.Capabilities()
    copied.CopyFrom(request.capabilities)
    return copied

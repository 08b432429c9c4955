"""What the gateway needs from a registry, independent of where the state lives.

The Register handler, the health monitor and the proxy use subsystems only through
the `Registry` protocol below, so a second implementation (shared state in Redis for
several gateway replicas) can sit beside the in-memory one (memory.py) without their
code changing. The value types every implementation shares live here too.

Each registration gets a fresh, registry-wide *epoch*; changes made on behalf of an
old connection carry its epoch and are ignored once a newer registration of the same
id exists, so a replaced stream that ends late can never mark its successor stale.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2


class Clock(Protocol):
    """Wall-clock time for display, monotonic time for measuring intervals."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class SubsystemState(StrEnum):
    CONNECTED = "connected"
    STALE = "stale"


@dataclass
class SubsystemInstance:
    """One registered subsystem as the gateway currently sees it."""

    id: str
    name: str
    description: str
    endpoint: str
    metadata: dict[str, str]
    workflows: list[types_pb2.WorkflowDefinition]
    capabilities: types_pb2.Capabilities | None
    state: SubsystemState
    epoch: int
    registered_at: datetime
    last_heartbeat: datetime
    last_heartbeat_monotonic: float
    request: gateway_service_pb2.RegisterRequest
    stale_since: datetime | None = None
    stale_since_monotonic: float | None = None

    @property
    def registration_id(self) -> str:
        """Names this registration (not just the subsystem) in logs and in the UI."""
        return f"{self.id}#{self.epoch}"

    @property
    def connected(self) -> bool:
        return self.state is SubsystemState.CONNECTED

    @property
    def log_fields(self) -> dict[str, str]:
        """Structured log fields (`extra=`) naming this registration; see serving/logs.py."""
        return {"subsystem_id": self.id, "registration_id": self.registration_id}


class RegistryListener(Protocol):
    """Told about registrations so per-subsystem resources can follow them."""

    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        """A subsystem registered, re-registered or replaced its connection."""

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        """A subsystem is gone for good (deregistered or stale past the grace period)."""


@dataclass
class Expiry:
    """What one health sweep changed."""

    went_stale: list[SubsystemInstance] = field(default_factory=list)
    removed: list[SubsystemInstance] = field(default_factory=list)


class Registry(Protocol):
    """Subsystem state keyed by subsystem id, as register, health and the proxy use it.

    Implementations are used from one event loop and must not block it: every method
    does work proportional to what it touches (one subsystem, its workflows), never
    to the number of registered subsystems, except the queries that return them all.
    """

    def add_listener(self, listener: RegistryListener) -> None:
        """Call `listener` on every registration and final removal from now on."""

    # --- changes ---------------------------------------------------------------------
    def register(self, request: gateway_service_pb2.RegisterRequest) -> SubsystemInstance:
        """Record a (re-)registration; it replaces any earlier one with the same id.

        The request must already be validated and authorised (validation.py); the
        API key is never kept.
        """
        ...

    def deregister(self, subsystem_id: str, epoch: int | None = None) -> SubsystemInstance | None:
        """Remove a subsystem (only if `epoch` is None or still current); returns it."""
        ...

    def mark_stale(self, subsystem_id: str, epoch: int) -> bool:
        """Mark a connected registration stale; False if it is not current or already stale."""
        ...

    def record_heartbeat(self, subsystem_id: str, epoch: int) -> bool:
        """A pong arrived; a stale registration whose stream answers again is connected.

        False when this registration is no longer current (replaced or removed),
        telling the caller to close the stream.
        """
        ...

    def update_discovery(
        self,
        subsystem_id: str,
        epoch: int,
        workflows: Iterable[types_pb2.WorkflowDefinition] | None = None,
        capabilities: types_pb2.Capabilities | None = None,
    ) -> bool:
        """Fill in what the subsystem did not announce; False if the epoch was replaced."""
        ...

    def expire(self, *, stale_after: float, remove_after: float) -> Expiry:
        """One health sweep: silent connected ones go stale, long-stale ones are removed.

        `stale_after`: seconds without a heartbeat; `remove_after`: seconds spent stale.
        """
        ...

    # --- queries ---------------------------------------------------------------------
    def get(self, subsystem_id: str) -> SubsystemInstance | None: ...

    def instances(self) -> list[SubsystemInstance]:
        """Every known subsystem, connected or stale, ordered by id."""
        ...

    def connected(self) -> list[SubsystemInstance]:
        """The connected subsystems, ordered by id."""
        ...

    def is_current(self, subsystem_id: str, epoch: int) -> bool: ...

    def workflow_owners(self, workflow_id: str) -> list[str]:
        """Ids of the subsystems (connected or stale) that define this workflow, sorted."""
        ...

"""The upstream pool: one set of Connect clients per registered subsystem, and discovery.

Client sets live exactly as long as registrations: the pool listens to the registry,
makes clients when a subsystem registers and drops them when it is removed. A
subsystem that registers before its own server listens (common) is probed with
backoff until it answers; the probe settles the HTTP version (h2c, else HTTP/1.1)
and discovery fills in what the RegisterRequest left out (workflows, capabilities).

`connect` is the one seam to the network: it builds the clients for an endpoint.
Production passes `SharedTransports.connect` (sockets); tests pass a factory that
serves a demo engine in-process, so routing and fan-out run without processes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Iterable
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.listing import list_all_workflows
from flowwatch_gateway.errors import RETRYABLE_CODES
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.upstream import Connect, HttpMode, UpstreamClients, negotiate
from flowwatch_gateway.registry.base import Registry, SubsystemInstance
from flowwatch_gateway.timers import GridTimer, call_on_grid
from flowwatch_gateway.urls import endpoint_url_problem

__all__ = ["UpstreamPool", "fetch_all_workflows"]

log = logging.getLogger(__name__)

DISCOVERY_FIRST_RETRY_S = 0.5
DISCOVERY_MAX_RETRY_S = 30.0
CLOSE_TIMEOUT_S = 2.0
RETRY_GRID_S = 0.5


async def fetch_all_workflows(
    clients: UpstreamClients, timeout_ms: int
) -> list[types.WorkflowDefinition]:
    """Every workflow of one subsystem, each naming its subsystem, within one budget."""
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            found = await list_all_workflows(clients.workflows, timeout_ms)
    except TimeoutError:
        raise ConnectError(Code.DEADLINE_EXCEEDED, "ListWorkflows timed out") from None
    for definition in found:
        if not definition.subsystem_id:
            definition.subsystem_id = clients.instance_id
    return found


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background gateway task failed", exc_info=exc)


def _made_once(connect: Connect) -> Connect:
    """`connect` that makes the clients for each (id, endpoint, mode) once, then reuses them."""
    made: dict[tuple[str, str, HttpMode | None], UpstreamClients] = {}

    def once(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        key = (instance_id, endpoint, mode)
        clients = made.get(key)
        if clients is None:
            clients = made[key] = connect(instance_id, endpoint, mode)
        return clients

    return once


class UpstreamPool:
    """Owns every subsystem's clients and the background work that prepares them."""

    def __init__(
        self,
        registry: Registry,
        *,
        timeout_s: float,
        connect: Connect,
        retry_s: tuple[float, float] = (DISCOVERY_FIRST_RETRY_S, DISCOVERY_MAX_RETRY_S),
    ) -> None:
        """`retry_s`: the first and the largest delay between discovery attempts.

        Attempts are due on a grid of RETRY_GRID_S (or the first delay, if shorter).
        """
        self._registry = registry
        self._timeout_s = timeout_s
        self._connect = connect
        self._first_retry_s, self._max_retry_s = retry_s
        self._retry_grid_s = min(RETRY_GRID_S, self._first_retry_s)
        self._clients: dict[str, UpstreamClients] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Discovery retries waiting for their turn (see _prepare).
        self._timers: set[GridTimer] = set()
        # connectrpc turns a cancelled call into ConnectError(CANCELED), so a loop
        # cannot rely on task cancellation alone to stop: it also checks this.
        self._closing = asyncio.Event()
        registry.add_listener(self)

    # --- what the proxy asks ---------------------------------------------------------
    def get(self, instance_id: str) -> UpstreamClients | None:
        return self._clients.get(instance_id)

    def connected(self, ids: Iterable[str] | None = None) -> list[UpstreamClients]:
        """Clients of connected subsystems (all, or those among `ids`), ordered by id."""
        wanted = None if ids is None else set(ids)
        return [
            self._clients[inst.id]
            for inst in self._registry.connected()
            if inst.id in self._clients and (wanted is None or inst.id in wanted)
        ]

    def connected_clients(self, instance_id: str) -> UpstreamClients | None:
        """The subsystem's clients if it is registered and connected now."""
        instance = self._registry.get(instance_id)
        if instance is None or not instance.connected:
            return None
        return self._clients.get(instance_id)

    def track(self, task: asyncio.Task[None]) -> None:
        """Tasks serving the proxy (e.g. stream readers) that aclose() must stop."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- registry listener: clients live exactly as long as registrations -------------
    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        old = self._clients.pop(instance.id, None)
        problem = endpoint_url_problem(instance.endpoint)
        if problem:  # a record from elsewhere (an older replica via Redis): never dialed
            log.warning(
                "subsystem %s is registered with an endpoint this gateway refuses (%s); "
                "it is not called until it registers again",
                instance.id,
                problem,
                extra={"subsystem_id": instance.id},
            )
            return
        # A reconnect to the same endpoint keeps the HTTP version already negotiated.
        mode = old.mode if old is not None and old.endpoint == instance.endpoint else None
        clients = self._connect(instance.id, instance.endpoint, mode)
        self._clients[instance.id] = clients
        self._spawn(self._prepare(instance, clients))

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        # Calls in flight keep their own reference; idle connections age out of the
        # shared transport.
        self._clients.pop(instance.id, None)

    async def aclose(self) -> None:
        self._closing.set()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=CLOSE_TIMEOUT_S)
        self._clients = {}

    # --- internals -------------------------------------------------------------------
    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        # The task owns the coroutine from here, so aclose() may cancel it even before
        # it first runs.
        task = asyncio.ensure_future(work)
        task.add_done_callback(_log_failure)
        self.track(task)

    async def _prepare(
        self,
        instance: SubsystemInstance,
        clients: UpstreamClients,
        delay: float | None = None,
        connect: Connect | None = None,
    ) -> None:
        """Settle the HTTP version, then discover what the registration left out.

        Both steps are retried with backoff for as long as this registration is
        current and the subsystem has not answered. Between attempts a subsystem
        costs one timer: no task waits, and the clients (the HTTP/1.1 fallback too)
        are made once and reused by every attempt. After the first attempt, while
        nothing accepts TCP connections at the endpoint, an attempt is that check alone
        (see _retry).
        """
        if not self._registry.is_current(instance.id, instance.epoch):
            return
        first = delay is None
        delay = self._first_retry_s if delay is None else delay
        connect = connect or _made_once(self._connect)
        if not first and not await clients.listening():
            # Still nothing listening (the first attempt said so in the log): a refused
            # TCP connect costs far less than a refused HTTP probe, at every retry.
            self._retry(instance, clients, delay, connect)
            return
        negotiated, reachable = await negotiate(clients, connect)
        if self._closing.is_set():
            return
        if negotiated is not clients:
            if self._clients.get(instance.id) is not clients:  # replaced meanwhile
                return
            self._clients[instance.id] = clients = negotiated
        if reachable and await self._discover(instance, clients):
            return
        if self._closing.is_set():
            return
        if not reachable:
            # Said once per registration: a subsystem that never listens would otherwise
            # log a line at every retry, for as long as it stays registered.
            (log.warning if first else log.debug)(
                "subsystem %s at %s does not answer yet; trying again with backoff",
                instance.id,
                instance.endpoint,
            )
        self._retry(instance, clients, delay, connect)

    def _retry(
        self, instance: SubsystemInstance, clients: UpstreamClients, delay: float, connect: Connect
    ) -> None:
        """Try again after a jittered `delay`; while the endpoint refuses connections at
        once, a retry is a timer and a refused connect, without a task."""
        next_delay = min(delay * 2, self._max_retry_s)

        def fire() -> None:
            self._timers.discard(handle)
            if self._closing.is_set() or not self._registry.is_current(instance.id, instance.epoch):
                return
            if clients.refused_now():
                self._retry(instance, clients, next_delay, connect)
            else:
                self._spawn(self._prepare(instance, clients, next_delay, connect))

        # Jitter: subsystems that registered together do not all retry in the same second.
        # On a grid, so retries due close together share one wake-up of the event loop
        # (under pyvoy each costs more than a refused connect).
        wait = random.uniform(delay / 2, delay)
        handle = call_on_grid(asyncio.get_running_loop(), wait, self._retry_grid_s, fire)
        self._timers.add(handle)

    async def _discover(self, instance: SubsystemInstance, clients: UpstreamClients) -> bool:
        """Fetch workflows/capabilities when the RegisterRequest carried none (Go clients).

        Returns False when the subsystem could not be reached (worth another try);
        an rpc it answers with an error (e.g. unimplemented) is not asked again.
        """
        timeout_ms = int(self._timeout_s * 1000)
        workflows: list[types.WorkflowDefinition] | None = None
        capabilities: types.Capabilities | None = None
        unreachable = False
        if not instance.workflows:
            try:
                workflows = await fetch_all_workflows(clients, timeout_ms)
            except ConnectError as exc:
                unreachable |= exc.code in RETRYABLE_CODES
                log.warning("discovery: ListWorkflows on %s failed: %s", instance.id, exc.message)
        if instance.capabilities is None:
            try:
                response = await clients.workflows.get_capabilities(
                    wf.GetCapabilitiesRequest(), timeout_ms=timeout_ms
                )
                capabilities = response.capabilities
            except ConnectError as exc:
                unreachable |= exc.code in RETRYABLE_CODES
                log.warning("discovery: GetCapabilities on %s failed: %s", instance.id, exc.message)
        if workflows is not None or capabilities is not None:
            self._registry.update_discovery(
                instance.id, instance.epoch, workflows=workflows, capabilities=capabilities
            )
        return not unreachable

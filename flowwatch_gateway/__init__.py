"""FlowWatch Gateway: one FlowWatch API in front of many workflow subsystems.

This package is also the SDK for subsystems written in Python. Keep one connected
to a gateway next to your own FlowWatch API:

    import asyncio
    from flowwatch_gateway import connect_to_gateway

    asyncio.run(connect_to_gateway(gateway_url="http://gateway:8091", subsystem_id="orders",
                                   local_endpoint="http://orders:9101", api_key="..."))

`connect_to_gateway_in_thread` does the same for programs without an event loop. To
serve the FlowWatch API itself, subclass `EngineAdapter` and mount
`flowwatch_asgi_apps(adapter)` (or, with Starlette, `flowwatch_routes(adapter)`).
`pip install flowwatch-gateway` is enough for all of this; the gateway server needs
the `server` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "BackgroundConnection",
    "Backoff",
    "CallContext",
    "ClientOptions",
    "ClientStatus",
    "ConnectionState",
    "EngineAdapter",
    "connect_to_gateway",
    "connect_to_gateway_in_thread",
    "flowwatch_asgi_apps",
    "flowwatch_routes",
]

# Where each public name lives. They are imported on first use, so the gateway's own
# entry points (CLI, healthcheck) that merely pass through this package do not pay
# for loading the client and the generated stubs, and no server module can run into
# a half-initialised package.
_HOMES = {
    "Backoff": "flowwatch_gateway.subsystem.backoff",
    "BackgroundConnection": "flowwatch_gateway.subsystem.client",
    "CallContext": "flowwatch_gateway.api.context",
    "ClientOptions": "flowwatch_gateway.subsystem.options",
    "ClientStatus": "flowwatch_gateway.subsystem.options",
    "ConnectionState": "flowwatch_gateway.subsystem.options",
    "EngineAdapter": "flowwatch_gateway.api.adapter",
    "connect_to_gateway": "flowwatch_gateway.subsystem.client",
    "connect_to_gateway_in_thread": "flowwatch_gateway.subsystem.client",
    "flowwatch_asgi_apps": "flowwatch_gateway.api.services",
    "flowwatch_routes": "flowwatch_gateway.api.services",
}

if TYPE_CHECKING:
    from flowwatch_gateway.api.adapter import EngineAdapter
    from flowwatch_gateway.api.context import CallContext
    from flowwatch_gateway.api.services import flowwatch_asgi_apps, flowwatch_routes
    from flowwatch_gateway.subsystem.backoff import Backoff
    from flowwatch_gateway.subsystem.client import (
        BackgroundConnection,
        connect_to_gateway,
        connect_to_gateway_in_thread,
    )
    from flowwatch_gateway.subsystem.options import ClientOptions, ClientStatus, ConnectionState
else:
    # Hidden from type checkers, which would otherwise accept any attribute of the package.

    def __getattr__(name: str) -> object:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})

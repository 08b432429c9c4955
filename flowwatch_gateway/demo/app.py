"""The demo subsystem's ASGI app: every FlowWatch service of an InMemoryEngine."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Route

from flowwatch_gateway.api.services import flowwatch_routes
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.serving.asgi_guard import GuardReceiveAfterBody


async def _healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def create_demo_app(engine: InMemoryEngine) -> Starlette:
    """Starlette app serving `engine` at the FlowWatch service paths, plus GET /healthz."""
    routes: list[BaseRoute] = [Route("/healthz", _healthz, methods=["GET"])]
    routes.extend(flowwatch_routes(engine))
    # Served by pyvoy like the gateway, so it gets the same receive() guard.
    return Starlette(routes=routes, middleware=[Middleware(GuardReceiveAfterBody)])

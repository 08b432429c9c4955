"""The thin Connect service layer: serves any EngineAdapter as the FlowWatch API.

One wrapper per rpc does what every backend needs and none should repeat:
required-field validation (`invalid_argument` naming the field), the caller's
deadline and response headers via CallContext, and error hygiene: a ConnectError
passes through with its code, anything else is logged and answered as `internal`
without leaking exception text to the caller.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from flowwatch_gateway.api.adapter import EngineAdapter
from flowwatch_gateway.api.compression import FastGzip
from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.api.limits import MAX_BULK_RUN_IDS, MAX_PAGE_SIZE
from flowwatch_gateway.api.ordering import ORDER_FIELDS
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_connect,
    analytics_service_pb2,
    run_service_connect,
    run_service_pb2,
    search_service_connect,
    search_service_pb2,
    stream_service_connect,
    stream_service_pb2,
    workflow_service_connect,
    workflow_service_pb2,
)

if TYPE_CHECKING:
    # Only for the annotation: the SDK installs without Starlette (see flowwatch_routes).
    from starlette.routing import Mount

__all__ = ["Backends", "flowwatch_asgi_apps", "flowwatch_routes", "validate_request"]

log = logging.getLogger(__name__)


# Fields a request must carry, per rpc: an empty one is the caller's mistake.
REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "GetWorkflow": ("workflow_id",),
    "GetGraph": ("workflow_id",),
    "GetSubsystem": ("subsystem_id",),
    "GetTrace": ("trace_id",),
    "GetRun": ("run_id",),
    "GetRunSteps": ("run_id",),
    "GetRunTimeline": ("run_id",),
    "GetRunLogs": ("run_id",),
    "RetryRun": ("run_id",),
    "RetryFromStep": ("run_id", "step_name"),
    "CancelRun": ("run_id",),
    "PauseRun": ("run_id",),
    "ResumeRun": ("run_id",),
    "SkipStep": ("run_id", "step_name"),
    "WatchRun": ("run_id",),
}

ORDER_BY_VALUES = ("", *ORDER_FIELDS)
GRANULARITIES = ("", "1m", "5m", "15m", "1h", "1d")

# (generated ASGI application class, service descriptor) for each UI-facing service.
_SERVICES: tuple[tuple[Callable[..., ConnectASGIApplication[Any]], ServiceDescriptor], ...] = (
    (
        workflow_service_connect.WorkflowServiceASGIApplication,
        workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
    ),
    (
        run_service_connect.RunServiceASGIApplication,
        run_service_pb2.DESCRIPTOR.services_by_name["RunService"],
    ),
    (
        analytics_service_connect.AnalyticsServiceASGIApplication,
        analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
    ),
    (
        stream_service_connect.StreamServiceASGIApplication,
        stream_service_pb2.DESCRIPTOR.services_by_name["StreamService"],
    ),
    (
        search_service_connect.SearchServiceASGIApplication,
        search_service_pb2.DESCRIPTOR.services_by_name["SearchService"],
    ),
)


def snake_case(rpc_name: str) -> str:
    """`GetRunTimeline` -> `get_run_timeline`, the generated method naming."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc_name).lower()


def validate_request(rpc: str, request: Message) -> None:
    """Reject requests that no backend could answer, with a message naming the field."""
    for name in REQUIRED_FIELDS.get(rpc, ()):
        if not getattr(request, name):
            raise ConnectError(Code.INVALID_ARGUMENT, f"{rpc}: {name} is required")
    run_ids = getattr(request, "run_ids", None) if rpc in ("BulkRetry", "BulkCancel") else None
    if run_ids is not None and len(run_ids) > MAX_BULK_RUN_IDS:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"{rpc}: run_ids holds {len(run_ids)} ids; at most {MAX_BULK_RUN_IDS} per call, "
            "split the action into several calls",
        )
    # Asking a message for a field it lacks raises inside protobuf, which is slow.
    fields = request.DESCRIPTOR.fields_by_name
    pagination = getattr(request, "pagination", None) if "pagination" in fields else None
    if pagination is not None and pagination.limit < 0:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"{rpc}: pagination.limit must be between 0 and {MAX_PAGE_SIZE}, "
            f"got {pagination.limit}",
        )
    if rpc == "ListRuns":
        order_by = getattr(request, "order_by", "")
        if order_by not in ORDER_BY_VALUES:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"ListRuns: order_by must be one of started_at, duration, status; got {order_by!r}",
            )
    analytics_filter = getattr(request, "filter", None) if "filter" in fields else None
    if isinstance(analytics_filter, analytics_service_pb2.AnalyticsFilter):
        if analytics_filter.granularity not in GRANULARITIES:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"{rpc}: granularity must be one of 1m, 5m, 15m, 1h, 1d; "
                f"got {analytics_filter.granularity!r}",
            )
        time_range = analytics_filter.time_range
        if (
            time_range.HasField("from")
            and time_range.HasField("to")
            and time_range.to.ToNanoseconds() <= getattr(time_range, "from").ToNanoseconds()
        ):
            raise ConnectError(Code.INVALID_ARGUMENT, f"{rpc}: time_range.to must be after from")


def _call_context(rctx: RequestContext[Any, Any]) -> CallContext:
    timeout_ms = rctx.timeout_ms
    ctx = CallContext.for_request(None if timeout_ms is None else timeout_ms / 1000.0)
    ctx.request_headers = {k: v for k, v in rctx.request_headers.items()}
    return ctx


def _send_headers(ctx: CallContext, rctx: RequestContext[Any, Any]) -> None:
    for key, value in ctx.response_headers.items():
        rctx.response_headers[key] = value


def _internal_error(rpc: str, exc: BaseException) -> ConnectError:
    log.error("%s failed", rpc, exc_info=exc)
    return ConnectError(Code.INTERNAL, f"{rpc} failed inside the server; see its logs")


def _unary_handler(
    rpc: str, impl: Callable[[Any, CallContext], Awaitable[Message]]
) -> Callable[[Any, RequestContext[Any, Any]], Awaitable[Message]]:
    async def handle(request: Any, rctx: RequestContext[Any, Any]) -> Message:
        ctx = _call_context(rctx)  # who is calling comes before what they asked
        validate_request(rpc, request)
        try:
            return await impl(request, ctx)
        except ConnectError:
            raise
        except Exception as exc:
            raise _internal_error(rpc, exc) from None
        finally:
            _send_headers(ctx, rctx)

    handle.__name__ = snake_case(rpc)
    return handle


def _stream_handler(
    rpc: str, impl: Callable[[Any, CallContext], AsyncIterator[Message]]
) -> Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Message]]:
    async def handle(request: Any, rctx: RequestContext[Any, Any]) -> AsyncIterator[Message]:
        ctx = _call_context(rctx)  # who is calling comes before what they asked
        validate_request(rpc, request)
        try:
            async for message in impl(request, ctx):
                _send_headers(ctx, rctx)
                yield message
        except ConnectError:
            raise
        except Exception as exc:
            raise _internal_error(rpc, exc) from None
        finally:
            _send_headers(ctx, rctx)  # an error before the first message carries them too

    handle.__name__ = snake_case(rpc)
    return handle


Backends = Mapping[str, object]
"""Per service name (e.g. "RunService"), an object with that service's rpc methods."""


def _bind(implementation: object, service: ServiceDescriptor) -> SimpleNamespace:
    handlers: dict[str, Any] = {}
    method: MethodDescriptor
    for method in service.methods:
        impl = getattr(implementation, snake_case(method.name))
        if method.server_streaming:
            handlers[snake_case(method.name)] = _stream_handler(method.name, impl)
        else:
            handlers[snake_case(method.name)] = _unary_handler(method.name, impl)
    return SimpleNamespace(**handlers)


def flowwatch_asgi_apps(adapter: EngineAdapter | Backends) -> list[ConnectASGIApplication[Any]]:
    """One Connect ASGI app per FlowWatch service, each to be mounted at its `.path`.

    `adapter` is one EngineAdapter for every service, or one object per service name
    (the gateway composes its API from a module per service).
    """
    return [
        app_cls(
            _bind(_implementation(adapter, descriptor.name), descriptor),
            compressions=[FastGzip()],
        )
        for app_cls, descriptor in _SERVICES
    ]


def _implementation(adapter: EngineAdapter | Backends, service_name: str) -> object:
    if isinstance(adapter, EngineAdapter):
        return adapter
    if service_name not in adapter:
        raise ValueError(f"no implementation given for {service_name}")
    return adapter[service_name]


def flowwatch_routes(adapter: EngineAdapter | Backends) -> list[Mount]:
    """Starlette routes serving every FlowWatch service of `adapter` at its own path.

    connectrpc apps must be mounted at their own `.path` (a deeper prefix 404s).
    Starlette comes with the `server` extra; `flowwatch_asgi_apps` needs no web framework.
    """
    try:
        from starlette.routing import Mount
    except ImportError as exc:
        raise ImportError(
            "flowwatch_routes needs Starlette, which comes with the server extra: "
            "pip install 'flowwatch-gateway[server]' (or mount flowwatch_asgi_apps(adapter) "
            "in any ASGI router, each app at its .path)"
        ) from exc
    return [Mount(app.path, app) for app in flowwatch_asgi_apps(adapter)]

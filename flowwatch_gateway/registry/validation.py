"""Every rule a RegisterRequest must meet before the registry records it.

One place, so the Register handler and any future registry implementation refuse
the same registrations with the same codes and messages (each naming the field).
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.gen.flowwatch.v1.gateway_service_pb2 import RegisterRequest
from flowwatch_gateway.urls import http_url_problem


def validate_register_request(request: RegisterRequest) -> None:
    """Reject a registration the gateway could not route to, naming the field and value."""
    if not request.subsystem_id.strip():
        raise ConnectError(Code.INVALID_ARGUMENT, "RegisterRequest.subsystem_id is required")
    endpoint = request.flowwatch_endpoint
    problem = http_url_problem(endpoint)
    if problem:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"RegisterRequest.flowwatch_endpoint must be an absolute http(s) URL with a host "
            f"(e.g. http://orders:8080), got {endpoint!r}: {problem}",
        )

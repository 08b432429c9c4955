"""Every rule a RegisterRequest must meet before the registry records it.

One place, so the Register handler and any future registry implementation refuse
the same registrations with the same codes and messages, each naming the field and
saying what would be accepted:

- shape (`invalid_argument`): the id's charset and length (it ends up in response
  headers and comma-joined metadata), caps on names, metadata and workflows, an
  absolute http(s) endpoint that fixes nothing but scheme, host, port and a path
  prefix (no query, fragment, credentials or ambiguous path: urls.endpoint_url_problem);
- the endpoint policy (`permission_denied`, see endpoints.py);
- the duplicate-id policy (`already_exists`, `takeover_refusal`).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.gen.flowwatch.v1.gateway_service_pb2 import RegisterRequest
from flowwatch_gateway.registry.base import SubsystemInstance
from flowwatch_gateway.urls import endpoint_url_problem, redact_url

# Letters, digits, '.', '_', '-'; starts with a letter or digit; at most 63 characters.
# Nothing that needs quoting in an HTTP header value or breaks a comma-joined list.
SUBSYSTEM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 4_000
MAX_ENDPOINT_CHARS = 2_048
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 1_024
MAX_WORKFLOWS = 1_000
MAX_WORKFLOW_ID_CHARS = 256
# Largest message accepted on the Register stream (connectrpc refuses bigger ones
# with resource_exhausted before the handler sees them). 1,000 workflows of a
# kilobyte each fit; the 20,000-workflow registration measured at 1.2 MB does not.
REGISTER_READ_MAX_BYTES = 1024 * 1024


def _invalid(message: str) -> ConnectError:
    return ConnectError(Code.INVALID_ARGUMENT, message)


def _check_length(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise _invalid(f"RegisterRequest.{field} has {len(value)} characters; at most {limit}")


def validate_register_request(request: RegisterRequest) -> None:
    """Reject a registration the gateway cannot safely record or route to."""
    subsystem_id = request.subsystem_id
    if not subsystem_id.strip():
        raise _invalid("RegisterRequest.subsystem_id is required")
    if not SUBSYSTEM_ID_PATTERN.fullmatch(subsystem_id):
        raise _invalid(
            f"RegisterRequest.subsystem_id {subsystem_id[:80]!r} is not allowed: use 1-63 "
            "letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(e.g. orders-eu.1)"
        )
    _check_length("subsystem_name", request.subsystem_name, MAX_NAME_CHARS)
    _check_length("description", request.description, MAX_DESCRIPTION_CHARS)
    endpoint = request.flowwatch_endpoint
    _check_length("flowwatch_endpoint", endpoint, MAX_ENDPOINT_CHARS)
    problem = endpoint_url_problem(endpoint)
    if problem:
        raise _invalid(
            f"RegisterRequest.flowwatch_endpoint {redact_url(endpoint)!r} is refused: {problem}"
        )
    if len(request.metadata) > MAX_METADATA_ENTRIES:
        raise _invalid(
            f"RegisterRequest.metadata has {len(request.metadata)} entries; "
            f"at most {MAX_METADATA_ENTRIES}"
        )
    for key, value in request.metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise _invalid(
                f"RegisterRequest.metadata key {key[:40]!r} must have 1-"
                f"{MAX_METADATA_KEY_CHARS} characters"
            )
        _check_length(f"metadata[{key!r}]", value, MAX_METADATA_VALUE_CHARS)
    if len(request.workflows) > MAX_WORKFLOWS:
        raise _invalid(
            f"RegisterRequest.workflows has {len(request.workflows)} entries; at most "
            f"{MAX_WORKFLOWS} per registration (leave it empty and the gateway lists them "
            "with ListWorkflows)"
        )
    for index, workflow in enumerate(request.workflows):
        if not workflow.id or len(workflow.id) > MAX_WORKFLOW_ID_CHARS:
            raise _invalid(
                f"RegisterRequest.workflows[{index}].id must have 1-{MAX_WORKFLOW_ID_CHARS} "
                "characters"
            )
        if workflow.subsystem_id and workflow.subsystem_id != subsystem_id:
            raise _invalid(
                f"RegisterRequest.workflows[{index}].subsystem_id {workflow.subsystem_id[:80]!r} "
                f"differs from RegisterRequest.subsystem_id {subsystem_id!r}: a subsystem "
                "registers only its own workflows (leave it empty)"
            )


def normalized_endpoint(endpoint: str) -> str:
    """The endpoint as compared for "same subsystem": case, default port and '/' ignored."""
    parts = urlsplit(endpoint.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return endpoint.strip()
    host = (parts.hostname or "").rstrip(".")
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def takeover_refusal(holder: SubsystemInstance | None, request: RegisterRequest) -> str | None:
    """Why `request` may not take the id from its current holder; None if it may.

    A restart of the same subsystem (same endpoint) replaces the old registration at
    once. A different process (another endpoint) may take over only a stale id:
    replacing a connected holder made two processes with one id flap forever, each
    registration replacing the other.
    """
    if holder is None or not holder.connected:
        return None
    if normalized_endpoint(holder.endpoint) == normalized_endpoint(request.flowwatch_endpoint):
        return None
    return (
        f"subsystem id {holder.id!r} is held by a connected subsystem at "
        f"{redact_url(holder.endpoint)}; this registration from "
        f"{redact_url(request.flowwatch_endpoint)} is refused. Give each process "
        "its own subsystem_id, or stop the other one: an id whose holder has gone stale "
        "can be taken over"
    )

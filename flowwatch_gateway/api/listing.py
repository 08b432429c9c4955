"""Reading a whole listing from a FlowWatch API, for the gateway and subsystems alike."""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2, workflow_service_connect
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf

__all__ = ["list_all_workflows"]

# Pages of ListWorkflows fetched before giving up on a subsystem that never stops paging.
MAX_WORKFLOW_PAGES = 1000
WORKFLOW_PAGE_SIZE = 100


async def list_all_workflows(
    client: workflow_service_connect.WorkflowServiceClient, timeout_ms: int
) -> list[types_pb2.WorkflowDefinition]:
    """Every page of ListWorkflows; the cursor is opaque, an empty one ends the listing."""
    workflows: list[types_pb2.WorkflowDefinition] = []
    cursor = ""
    seen_cursors: set[str] = set()
    for _ in range(MAX_WORKFLOW_PAGES):
        request = wf.ListWorkflowsRequest()
        request.pagination.cursor = cursor
        request.pagination.limit = WORKFLOW_PAGE_SIZE
        response = await client.list_workflows(request, timeout_ms=timeout_ms)
        workflows.extend(response.workflows)
        cursor = response.pagination.next_cursor
        if not cursor:
            return workflows
        if cursor in seen_cursors:
            raise ConnectError(
                Code.DATA_LOSS,
                f"ListWorkflows returned the cursor {cursor!r} twice; the listing never ends",
            )
        seen_cursors.add(cursor)
    raise ConnectError(
        Code.RESOURCE_EXHAUSTED,
        f"ListWorkflows still had more pages after {MAX_WORKFLOW_PAGES} pages",
    )

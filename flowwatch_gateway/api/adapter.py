"""The FlowWatch engine adapter: the one interface every FlowWatch backend implements.

The Connect service layer (`services.py`) serves any adapter. The gateway's adapter
proxies to registered subsystems, the demo subsystem's adapter answers from memory,
and a Python workflow engine can plug in the same way. Methods take and return the
generated protobuf messages directly, so there is no parallel set of domain types.

A method an engine does not support keeps the default here, which answers
`unimplemented` with a message naming the rpc.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_pb2 as analytics,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    run_service_pb2 as runs,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    search_service_pb2 as search_pb,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    stream_service_pb2 as stream,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    workflow_service_pb2 as wf,
)

__all__ = ["EngineAdapter"]


def _unsupported(rpc: str) -> ConnectError:
    return ConnectError(Code.UNIMPLEMENTED, f"{rpc} is not supported by this FlowWatch engine")


class EngineAdapter:
    """Base class for FlowWatch backends; override what your engine supports."""

    # --- WorkflowService -------------------------------------------------------------
    async def list_workflows(
        self, request: wf.ListWorkflowsRequest, ctx: CallContext
    ) -> wf.ListWorkflowsResponse:
        raise _unsupported("ListWorkflows")

    async def get_workflow(
        self, request: wf.GetWorkflowRequest, ctx: CallContext
    ) -> wf.GetWorkflowResponse:
        raise _unsupported("GetWorkflow")

    async def get_graph(self, request: wf.GetGraphRequest, ctx: CallContext) -> wf.GetGraphResponse:
        raise _unsupported("GetGraph")

    async def list_subsystems(
        self, request: wf.ListSubsystemsRequest, ctx: CallContext
    ) -> wf.ListSubsystemsResponse:
        raise _unsupported("ListSubsystems")

    async def get_subsystem(
        self, request: wf.GetSubsystemRequest, ctx: CallContext
    ) -> wf.GetSubsystemResponse:
        raise _unsupported("GetSubsystem")

    async def get_trace(self, request: wf.GetTraceRequest, ctx: CallContext) -> wf.GetTraceResponse:
        raise _unsupported("GetTrace")

    async def get_capabilities(
        self, request: wf.GetCapabilitiesRequest, ctx: CallContext
    ) -> wf.GetCapabilitiesResponse:
        raise _unsupported("GetCapabilities")

    # --- RunService ------------------------------------------------------------------
    async def list_runs(
        self, request: runs.ListRunsRequest, ctx: CallContext
    ) -> runs.ListRunsResponse:
        raise _unsupported("ListRuns")

    async def get_run(self, request: runs.GetRunRequest, ctx: CallContext) -> runs.GetRunResponse:
        raise _unsupported("GetRun")

    async def get_run_steps(
        self, request: runs.GetRunStepsRequest, ctx: CallContext
    ) -> runs.GetRunStepsResponse:
        raise _unsupported("GetRunSteps")

    async def get_run_timeline(
        self, request: runs.GetRunTimelineRequest, ctx: CallContext
    ) -> runs.GetRunTimelineResponse:
        raise _unsupported("GetRunTimeline")

    async def get_run_logs(
        self, request: runs.GetRunLogsRequest, ctx: CallContext
    ) -> runs.GetRunLogsResponse:
        raise _unsupported("GetRunLogs")

    async def retry_run(
        self, request: runs.RetryRunRequest, ctx: CallContext
    ) -> runs.RetryRunResponse:
        raise _unsupported("RetryRun")

    async def retry_from_step(
        self, request: runs.RetryFromStepRequest, ctx: CallContext
    ) -> runs.RetryFromStepResponse:
        raise _unsupported("RetryFromStep")

    async def cancel_run(
        self, request: runs.CancelRunRequest, ctx: CallContext
    ) -> runs.CancelRunResponse:
        raise _unsupported("CancelRun")

    async def pause_run(
        self, request: runs.PauseRunRequest, ctx: CallContext
    ) -> runs.PauseRunResponse:
        raise _unsupported("PauseRun")

    async def resume_run(
        self, request: runs.ResumeRunRequest, ctx: CallContext
    ) -> runs.ResumeRunResponse:
        raise _unsupported("ResumeRun")

    async def skip_step(
        self, request: runs.SkipStepRequest, ctx: CallContext
    ) -> runs.SkipStepResponse:
        raise _unsupported("SkipStep")

    async def bulk_retry(
        self, request: runs.BulkRetryRequest, ctx: CallContext
    ) -> runs.BulkRetryResponse:
        raise _unsupported("BulkRetry")

    async def bulk_cancel(
        self, request: runs.BulkCancelRequest, ctx: CallContext
    ) -> runs.BulkCancelResponse:
        raise _unsupported("BulkCancel")

    # --- AnalyticsService ------------------------------------------------------------
    async def get_throughput(
        self, request: analytics.GetThroughputRequest, ctx: CallContext
    ) -> analytics.GetThroughputResponse:
        raise _unsupported("GetThroughput")

    async def get_latency(
        self, request: analytics.GetLatencyRequest, ctx: CallContext
    ) -> analytics.GetLatencyResponse:
        raise _unsupported("GetLatency")

    async def get_failure_rate(
        self, request: analytics.GetFailureRateRequest, ctx: CallContext
    ) -> analytics.GetFailureRateResponse:
        raise _unsupported("GetFailureRate")

    async def get_step_heatmap(
        self, request: analytics.GetStepHeatmapRequest, ctx: CallContext
    ) -> analytics.GetStepHeatmapResponse:
        raise _unsupported("GetStepHeatmap")

    async def get_step_duration(
        self, request: analytics.GetStepDurationRequest, ctx: CallContext
    ) -> analytics.GetStepDurationResponse:
        raise _unsupported("GetStepDuration")

    # --- StreamService (server streams) ----------------------------------------------
    def watch_runs(
        self, request: stream.WatchRunsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunEvent]:
        raise _unsupported("WatchRuns")

    def watch_run(
        self, request: stream.WatchRunRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunDetailEvent]:
        raise _unsupported("WatchRun")

    def watch_stats(
        self, request: stream.WatchStatsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.StatsSnapshot]:
        raise _unsupported("WatchStats")

    # --- SearchService ---------------------------------------------------------------
    async def search(
        self, request: search_pb.SearchRequest, ctx: CallContext
    ) -> search_pb.SearchResponse:
        raise _unsupported("Search")

    async def suggest(
        self, request: search_pb.SuggestRequest, ctx: CallContext
    ) -> search_pb.SuggestResponse:
        raise _unsupported("Suggest")

    async def explain(
        self, request: search_pb.ExplainRequest, ctx: CallContext
    ) -> search_pb.ExplainResponse:
        raise _unsupported("Explain")

    async def get_index_stats(
        self, request: search_pb.GetIndexStatsRequest, ctx: CallContext
    ) -> search_pb.GetIndexStatsResponse:
        raise _unsupported("GetIndexStats")

    async def reindex(
        self, request: search_pb.ReindexRequest, ctx: CallContext
    ) -> search_pb.ReindexResponse:
        raise _unsupported("Reindex")

    async def aclose(self) -> None:
        """Release resources (connections, tasks). Called once at shutdown."""

"""A demo subsystem with an owner's quirks, for comparing the gateway's two proxy paths.

Its runs name no subsystem (the gateway must fill `subsystem_id` in, GetRun too),
and it answers per-run reads with its own errors: GetRunSteps `internal`,
GetRunTimeline `failed_precondition`, GetRunLogs `not_found` (for a run it listed,
so the gateway's cached owner is wrong); PauseRun never answers within a test's
deadline (PAUSE_HANG_S). Served by uvicorn (HTTP/1.1) in its own
process:

    python -m tests.support.quirky_owner --id quirky --port 9102 --seed 4 \
        --now 2026-11-27T12:00:00+00:00
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs_pb

STEPS_ERROR = "step store for {run_id} is corrupt (quirky)"
TIMELINE_ERROR = "timeline of {run_id} is still being compacted (quirky)"
LOGS_ERROR = "logs of {run_id} were rotated away (quirky)"
PAUSE_HANG_S = 30.0


class QuirkyEngine(InMemoryEngine):
    async def list_runs(
        self, request: runs_pb.ListRunsRequest, ctx: CallContext
    ) -> runs_pb.ListRunsResponse:
        # Its runs carry no subsystem id, so a filter by subsystem means "all of mine".
        del request.filter.subsystem_ids[:]
        return await super().list_runs(request, ctx)

    async def get_run_steps(
        self, request: runs_pb.GetRunStepsRequest, ctx: CallContext
    ) -> runs_pb.GetRunStepsResponse:
        raise ConnectError(Code.INTERNAL, STEPS_ERROR.format(run_id=request.run_id))

    async def get_run_timeline(
        self, request: runs_pb.GetRunTimelineRequest, ctx: CallContext
    ) -> runs_pb.GetRunTimelineResponse:
        raise ConnectError(Code.FAILED_PRECONDITION, TIMELINE_ERROR.format(run_id=request.run_id))

    async def get_run_logs(
        self, request: runs_pb.GetRunLogsRequest, ctx: CallContext
    ) -> runs_pb.GetRunLogsResponse:
        raise ConnectError(Code.NOT_FOUND, LOGS_ERROR.format(run_id=request.run_id))

    async def pause_run(
        self, request: runs_pb.PauseRunRequest, ctx: CallContext
    ) -> runs_pb.PauseRunResponse:
        await asyncio.sleep(PAUSE_HANG_S)
        return await super().pause_run(request, ctx)


def quirky_engine(subsystem_id: str, seed: int, now: datetime) -> QuirkyEngine:
    engine = QuirkyEngine.demo(subsystem_id, seed=seed, now=now)
    for run in engine.data.runs:
        run.subsystem_id = ""  # a subsystem that leaves naming itself to the gateway
    return QuirkyEngine(engine.data, clock=lambda: now)


def main() -> None:
    import uvicorn

    from flowwatch_gateway.demo.app import create_demo_app

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--now", required=True)
    args = parser.parse_args()
    engine = quirky_engine(args.id, args.seed, datetime.fromisoformat(args.now))
    uvicorn.run(create_demo_app(engine), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

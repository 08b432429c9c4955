import datetime

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as _types_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCapabilitiesResponse(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _types_pb2.Capabilities
    def __init__(self, capabilities: _Optional[_Union[_types_pb2.Capabilities, _Mapping]] = ...) -> None: ...

class GetGraphRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class GetGraphResponse(_message.Message):
    __slots__ = ("graph",)
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    graph: _types_pb2.Graph
    def __init__(self, graph: _Optional[_Union[_types_pb2.Graph, _Mapping]] = ...) -> None: ...

class GetSubsystemRequest(_message.Message):
    __slots__ = ("subsystem_id",)
    SUBSYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    subsystem_id: str
    def __init__(self, subsystem_id: _Optional[str] = ...) -> None: ...

class GetSubsystemResponse(_message.Message):
    __slots__ = ("subsystem", "workflows")
    SUBSYSTEM_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    subsystem: SubsystemSummary
    workflows: _containers.RepeatedCompositeFieldContainer[_types_pb2.WorkflowDefinition]
    def __init__(self, subsystem: _Optional[_Union[SubsystemSummary, _Mapping]] = ..., workflows: _Optional[_Iterable[_Union[_types_pb2.WorkflowDefinition, _Mapping]]] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("trace_id",)
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    def __init__(self, trace_id: _Optional[str] = ...) -> None: ...

class GetTraceResponse(_message.Message):
    __slots__ = ("trace_id", "spans", "total_duration", "subsystem_count")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    spans: _containers.RepeatedCompositeFieldContainer[TraceSpan]
    total_duration: _duration_pb2.Duration
    subsystem_count: int
    def __init__(self, trace_id: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[TraceSpan, _Mapping]]] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., subsystem_count: _Optional[int] = ...) -> None: ...

class GetWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class GetWorkflowResponse(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: _types_pb2.WorkflowDefinition
    def __init__(self, workflow: _Optional[_Union[_types_pb2.WorkflowDefinition, _Mapping]] = ...) -> None: ...

class ListSubsystemsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSubsystemsResponse(_message.Message):
    __slots__ = ("subsystems",)
    SUBSYSTEMS_FIELD_NUMBER: _ClassVar[int]
    subsystems: _containers.RepeatedCompositeFieldContainer[SubsystemSummary]
    def __init__(self, subsystems: _Optional[_Iterable[_Union[SubsystemSummary, _Mapping]]] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("pagination",)
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    pagination: _types_pb2.PaginationRequest
    def __init__(self, pagination: _Optional[_Union[_types_pb2.PaginationRequest, _Mapping]] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows", "pagination")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[_types_pb2.WorkflowDefinition]
    pagination: _types_pb2.PaginationResponse
    def __init__(self, workflows: _Optional[_Iterable[_Union[_types_pb2.WorkflowDefinition, _Mapping]]] = ..., pagination: _Optional[_Union[_types_pb2.PaginationResponse, _Mapping]] = ...) -> None: ...

class SubsystemSummary(_message.Message):
    __slots__ = ("subsystem", "workflow_count", "active_runs", "failed_last_hour", "error_rate_last_hour")
    SUBSYSTEM_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUNS_FIELD_NUMBER: _ClassVar[int]
    FAILED_LAST_HOUR_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_LAST_HOUR_FIELD_NUMBER: _ClassVar[int]
    subsystem: _types_pb2.Subsystem
    workflow_count: int
    active_runs: int
    failed_last_hour: int
    error_rate_last_hour: float
    def __init__(self, subsystem: _Optional[_Union[_types_pb2.Subsystem, _Mapping]] = ..., workflow_count: _Optional[int] = ..., active_runs: _Optional[int] = ..., failed_last_hour: _Optional[int] = ..., error_rate_last_hour: _Optional[float] = ...) -> None: ...

class TraceSpan(_message.Message):
    __slots__ = ("span_id", "parent_span_id", "run", "subsystem_id", "offset", "duration", "steps")
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    span_id: str
    parent_span_id: str
    run: _types_pb2.Run
    subsystem_id: str
    offset: _duration_pb2.Duration
    duration: _duration_pb2.Duration
    steps: _containers.RepeatedCompositeFieldContainer[_types_pb2.StepExecution]
    def __init__(self, span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., run: _Optional[_Union[_types_pb2.Run, _Mapping]] = ..., subsystem_id: _Optional[str] = ..., offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[_types_pb2.StepExecution, _Mapping]]] = ...) -> None: ...

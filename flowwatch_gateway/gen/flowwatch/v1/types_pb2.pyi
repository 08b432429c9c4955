import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GraphNodeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAPH_NODE_TYPE_UNSPECIFIED: _ClassVar[GraphNodeType]
    GRAPH_NODE_TYPE_STEP: _ClassVar[GraphNodeType]
    GRAPH_NODE_TYPE_CONDITION: _ClassVar[GraphNodeType]
    GRAPH_NODE_TYPE_FORK: _ClassVar[GraphNodeType]
    GRAPH_NODE_TYPE_JOIN: _ClassVar[GraphNodeType]
    GRAPH_NODE_TYPE_SUBWORKFLOW: _ClassVar[GraphNodeType]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARN: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_PENDING: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELED: _ClassVar[RunStatus]
    RUN_STATUS_PAUSED: _ClassVar[RunStatus]

class StepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATUS_UNSPECIFIED: _ClassVar[StepStatus]
    STEP_STATUS_PENDING: _ClassVar[StepStatus]
    STEP_STATUS_RUNNING: _ClassVar[StepStatus]
    STEP_STATUS_SUCCEEDED: _ClassVar[StepStatus]
    STEP_STATUS_FAILED: _ClassVar[StepStatus]
    STEP_STATUS_SKIPPED: _ClassVar[StepStatus]
    STEP_STATUS_CANCELED: _ClassVar[StepStatus]
GRAPH_NODE_TYPE_UNSPECIFIED: GraphNodeType
GRAPH_NODE_TYPE_STEP: GraphNodeType
GRAPH_NODE_TYPE_CONDITION: GraphNodeType
GRAPH_NODE_TYPE_FORK: GraphNodeType
GRAPH_NODE_TYPE_JOIN: GraphNodeType
GRAPH_NODE_TYPE_SUBWORKFLOW: GraphNodeType
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARN: LogLevel
LOG_LEVEL_ERROR: LogLevel
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_PENDING: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELED: RunStatus
RUN_STATUS_PAUSED: RunStatus
STEP_STATUS_UNSPECIFIED: StepStatus
STEP_STATUS_PENDING: StepStatus
STEP_STATUS_RUNNING: StepStatus
STEP_STATUS_SUCCEEDED: StepStatus
STEP_STATUS_FAILED: StepStatus
STEP_STATUS_SKIPPED: StepStatus
STEP_STATUS_CANCELED: StepStatus

class Capabilities(_message.Message):
    __slots__ = ("retry_run", "retry_from_step", "cancel_run", "pause_run", "resume_run", "skip_step", "streaming", "analytics", "search")
    RETRY_RUN_FIELD_NUMBER: _ClassVar[int]
    RETRY_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    CANCEL_RUN_FIELD_NUMBER: _ClassVar[int]
    PAUSE_RUN_FIELD_NUMBER: _ClassVar[int]
    RESUME_RUN_FIELD_NUMBER: _ClassVar[int]
    SKIP_STEP_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    ANALYTICS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    retry_run: bool
    retry_from_step: bool
    cancel_run: bool
    pause_run: bool
    resume_run: bool
    skip_step: bool
    streaming: bool
    analytics: bool
    search: SearchCapabilities
    def __init__(self, retry_run: _Optional[bool] = ..., retry_from_step: _Optional[bool] = ..., cancel_run: _Optional[bool] = ..., pause_run: _Optional[bool] = ..., resume_run: _Optional[bool] = ..., skip_step: _Optional[bool] = ..., streaming: _Optional[bool] = ..., analytics: _Optional[bool] = ..., search: _Optional[_Union[SearchCapabilities, _Mapping]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("message", "code", "stack_trace")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STACK_TRACE_FIELD_NUMBER: _ClassVar[int]
    message: str
    code: str
    stack_trace: str
    def __init__(self, message: _Optional[str] = ..., code: _Optional[str] = ..., stack_trace: _Optional[str] = ...) -> None: ...

class Graph(_message.Message):
    __slots__ = ("workflow_id", "nodes", "edges")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[GraphNode]
    edges: _containers.RepeatedCompositeFieldContainer[GraphEdge]
    def __init__(self, workflow_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[GraphNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[GraphEdge, _Mapping]]] = ...) -> None: ...

class GraphEdge(_message.Message):
    __slots__ = ("source_id", "target_id", "label")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    target_id: str
    label: str
    def __init__(self, source_id: _Optional[str] = ..., target_id: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class GraphNode(_message.Message):
    __slots__ = ("id", "label", "type", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: str
    type: GraphNodeType
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., label: _Optional[str] = ..., type: _Optional[_Union[GraphNodeType, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("run_id", "step_name", "line_number", "timestamp", "level", "message", "source")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    LINE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step_name: str
    line_number: int
    timestamp: _timestamp_pb2.Timestamp
    level: LogLevel
    message: str
    source: str
    def __init__(self, run_id: _Optional[str] = ..., step_name: _Optional[str] = ..., line_number: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., level: _Optional[_Union[LogLevel, str]] = ..., message: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class PaginationRequest(_message.Message):
    __slots__ = ("cursor", "limit")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    limit: int
    def __init__(self, cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class PaginationResponse(_message.Message):
    __slots__ = ("next_cursor", "total_count")
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    next_cursor: str
    total_count: int
    def __init__(self, next_cursor: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "workflow_id", "foreign_id", "status", "current_step", "subsystem_id", "trace", "started_at", "finished_at", "duration", "error", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    workflow_id: str
    foreign_id: str
    status: RunStatus
    current_step: str
    subsystem_id: str
    trace: TraceContext
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    error: ErrorDetail
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., foreign_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., current_step: _Optional[str] = ..., subsystem_id: _Optional[str] = ..., trace: _Optional[_Union[TraceContext, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., error: _Optional[_Union[ErrorDetail, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SearchCapabilities(_message.Message):
    __slots__ = ("enabled", "engine", "scopes", "query_language", "max_results", "payload_indexed", "log_indexed", "log_retention_days", "payload_retention_days")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    QUERY_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_INDEXED_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEXED_FIELD_NUMBER: _ClassVar[int]
    LOG_RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    engine: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    query_language: bool
    max_results: int
    payload_indexed: bool
    log_indexed: bool
    log_retention_days: int
    payload_retention_days: int
    def __init__(self, enabled: _Optional[bool] = ..., engine: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., query_language: _Optional[bool] = ..., max_results: _Optional[int] = ..., payload_indexed: _Optional[bool] = ..., log_indexed: _Optional[bool] = ..., log_retention_days: _Optional[int] = ..., payload_retention_days: _Optional[int] = ...) -> None: ...

class StepExecution(_message.Message):
    __slots__ = ("id", "run_id", "step_name", "status", "attempt", "started_at", "finished_at", "duration", "queue_wait", "input", "output", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    run_id: str
    step_name: str
    status: StepStatus
    attempt: int
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    queue_wait: _duration_pb2.Duration
    input: _struct_pb2.Struct
    output: _struct_pb2.Struct
    error: ErrorDetail
    def __init__(self, id: _Optional[str] = ..., run_id: _Optional[str] = ..., step_name: _Optional[str] = ..., status: _Optional[_Union[StepStatus, str]] = ..., attempt: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., queue_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[_Union[ErrorDetail, _Mapping]] = ...) -> None: ...

class Subsystem(_message.Message):
    __slots__ = ("id", "name", "description", "metadata", "created_at")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    metadata: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("to",)
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    to: _timestamp_pb2.Timestamp
    def __init__(self, to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., **kwargs) -> None: ...

class TraceContext(_message.Message):
    __slots__ = ("trace_id", "span_id", "parent_span_id", "additional_trace_ids", "trace_source")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_TRACE_IDS_FIELD_NUMBER: _ClassVar[int]
    TRACE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    span_id: str
    parent_span_id: str
    additional_trace_ids: _containers.RepeatedScalarFieldContainer[str]
    trace_source: str
    def __init__(self, trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., additional_trace_ids: _Optional[_Iterable[str]] = ..., trace_source: _Optional[str] = ...) -> None: ...

class WorkflowDefinition(_message.Message):
    __slots__ = ("id", "name", "engine", "version", "subsystem_id", "created_at", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    engine: str
    version: str
    subsystem_id: str
    created_at: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., engine: _Optional[str] = ..., version: _Optional[str] = ..., subsystem_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

import datetime

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as _types_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BulkActionResult(_message.Message):
    __slots__ = ("run_id", "success", "error", "new_run_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NEW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    success: bool
    error: str
    new_run_id: str
    def __init__(self, run_id: _Optional[str] = ..., success: _Optional[bool] = ..., error: _Optional[str] = ..., new_run_id: _Optional[str] = ...) -> None: ...

class BulkCancelRequest(_message.Message):
    __slots__ = ("run_ids", "reason")
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class BulkCancelResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BulkActionResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BulkActionResult, _Mapping]]] = ...) -> None: ...

class BulkRetryRequest(_message.Message):
    __slots__ = ("run_ids",)
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class BulkRetryResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BulkActionResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BulkActionResult, _Mapping]]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRunLogsRequest(_message.Message):
    __slots__ = ("run_id", "step_name", "levels", "pagination")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step_name: str
    levels: _containers.RepeatedScalarFieldContainer[_types_pb2.LogLevel]
    pagination: _types_pb2.PaginationRequest
    def __init__(self, run_id: _Optional[str] = ..., step_name: _Optional[str] = ..., levels: _Optional[_Iterable[_Union[_types_pb2.LogLevel, str]]] = ..., pagination: _Optional[_Union[_types_pb2.PaginationRequest, _Mapping]] = ...) -> None: ...

class GetRunLogsResponse(_message.Message):
    __slots__ = ("logs", "pagination")
    LOGS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    logs: _containers.RepeatedCompositeFieldContainer[_types_pb2.LogEntry]
    pagination: _types_pb2.PaginationResponse
    def __init__(self, logs: _Optional[_Iterable[_Union[_types_pb2.LogEntry, _Mapping]]] = ..., pagination: _Optional[_Union[_types_pb2.PaginationResponse, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _types_pb2.Run
    def __init__(self, run: _Optional[_Union[_types_pb2.Run, _Mapping]] = ...) -> None: ...

class GetRunStepsRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunStepsResponse(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[_types_pb2.StepExecution]
    def __init__(self, steps: _Optional[_Iterable[_Union[_types_pb2.StepExecution, _Mapping]]] = ...) -> None: ...

class GetRunTimelineRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunTimelineResponse(_message.Message):
    __slots__ = ("run_id", "total_duration", "entries")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    total_duration: _duration_pb2.Duration
    entries: _containers.RepeatedCompositeFieldContainer[TimelineEntry]
    def __init__(self, run_id: _Optional[str] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., entries: _Optional[_Iterable[_Union[TimelineEntry, _Mapping]]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("filter", "pagination", "order_by", "descending")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    filter: RunFilter
    pagination: _types_pb2.PaginationRequest
    order_by: str
    descending: bool
    def __init__(self, filter: _Optional[_Union[RunFilter, _Mapping]] = ..., pagination: _Optional[_Union[_types_pb2.PaginationRequest, _Mapping]] = ..., order_by: _Optional[str] = ..., descending: _Optional[bool] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "pagination")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Run]
    pagination: _types_pb2.PaginationResponse
    def __init__(self, runs: _Optional[_Iterable[_Union[_types_pb2.Run, _Mapping]]] = ..., pagination: _Optional[_Union[_types_pb2.PaginationResponse, _Mapping]] = ...) -> None: ...

class PauseRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class PauseRunResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ResumeRunResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RetryFromStepRequest(_message.Message):
    __slots__ = ("run_id", "step_name")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step_name: str
    def __init__(self, run_id: _Optional[str] = ..., step_name: _Optional[str] = ...) -> None: ...

class RetryFromStepResponse(_message.Message):
    __slots__ = ("new_run_id",)
    NEW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    new_run_id: str
    def __init__(self, new_run_id: _Optional[str] = ...) -> None: ...

class RetryRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class RetryRunResponse(_message.Message):
    __slots__ = ("new_run_id",)
    NEW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    new_run_id: str
    def __init__(self, new_run_id: _Optional[str] = ...) -> None: ...

class RunFilter(_message.Message):
    __slots__ = ("workflow_ids", "statuses", "time_range", "foreign_id", "subsystem_ids", "trace_id", "metadata_match")
    class MetadataMatchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_IDS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_MATCH_FIELD_NUMBER: _ClassVar[int]
    workflow_ids: _containers.RepeatedScalarFieldContainer[str]
    statuses: _containers.RepeatedScalarFieldContainer[_types_pb2.RunStatus]
    time_range: _types_pb2.TimeRange
    foreign_id: str
    subsystem_ids: _containers.RepeatedScalarFieldContainer[str]
    trace_id: str
    metadata_match: _containers.ScalarMap[str, str]
    def __init__(self, workflow_ids: _Optional[_Iterable[str]] = ..., statuses: _Optional[_Iterable[_Union[_types_pb2.RunStatus, str]]] = ..., time_range: _Optional[_Union[_types_pb2.TimeRange, _Mapping]] = ..., foreign_id: _Optional[str] = ..., subsystem_ids: _Optional[_Iterable[str]] = ..., trace_id: _Optional[str] = ..., metadata_match: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SkipStepRequest(_message.Message):
    __slots__ = ("run_id", "step_name", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step_name: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., step_name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SkipStepResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TimelineEntry(_message.Message):
    __slots__ = ("step_name", "status", "attempt", "offset", "duration", "queue_wait", "error")
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    step_name: str
    status: _types_pb2.StepStatus
    attempt: int
    offset: _duration_pb2.Duration
    duration: _duration_pb2.Duration
    queue_wait: _duration_pb2.Duration
    error: _types_pb2.ErrorDetail
    def __init__(self, step_name: _Optional[str] = ..., status: _Optional[_Union[_types_pb2.StepStatus, str]] = ..., attempt: _Optional[int] = ..., offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., queue_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., error: _Optional[_Union[_types_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

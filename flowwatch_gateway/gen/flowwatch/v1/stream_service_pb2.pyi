import datetime

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunDetailEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_DETAIL_EVENT_TYPE_UNSPECIFIED: _ClassVar[RunDetailEventType]
    RUN_DETAIL_EVENT_TYPE_RUN_UPDATED: _ClassVar[RunDetailEventType]
    RUN_DETAIL_EVENT_TYPE_STEP_UPDATED: _ClassVar[RunDetailEventType]
    RUN_DETAIL_EVENT_TYPE_LOG_APPENDED: _ClassVar[RunDetailEventType]

class RunEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_EVENT_TYPE_UNSPECIFIED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_CREATED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_UPDATED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_COMPLETED: _ClassVar[RunEventType]
RUN_DETAIL_EVENT_TYPE_UNSPECIFIED: RunDetailEventType
RUN_DETAIL_EVENT_TYPE_RUN_UPDATED: RunDetailEventType
RUN_DETAIL_EVENT_TYPE_STEP_UPDATED: RunDetailEventType
RUN_DETAIL_EVENT_TYPE_LOG_APPENDED: RunDetailEventType
RUN_EVENT_TYPE_UNSPECIFIED: RunEventType
RUN_EVENT_TYPE_CREATED: RunEventType
RUN_EVENT_TYPE_UPDATED: RunEventType
RUN_EVENT_TYPE_COMPLETED: RunEventType

class RunDetailEvent(_message.Message):
    __slots__ = ("event_type", "event_time", "run", "step", "log_entry")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOG_ENTRY_FIELD_NUMBER: _ClassVar[int]
    event_type: RunDetailEventType
    event_time: _timestamp_pb2.Timestamp
    run: _types_pb2.Run
    step: _types_pb2.StepExecution
    log_entry: _types_pb2.LogEntry
    def __init__(self, event_type: _Optional[_Union[RunDetailEventType, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run: _Optional[_Union[_types_pb2.Run, _Mapping]] = ..., step: _Optional[_Union[_types_pb2.StepExecution, _Mapping]] = ..., log_entry: _Optional[_Union[_types_pb2.LogEntry, _Mapping]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("event_type", "run", "event_time")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    event_type: RunEventType
    run: _types_pb2.Run
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, event_type: _Optional[_Union[RunEventType, str]] = ..., run: _Optional[_Union[_types_pb2.Run, _Mapping]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StatsSnapshot(_message.Message):
    __slots__ = ("timestamp", "running", "succeeded_last_minute", "failed_last_minute", "paused", "rate_per_minute", "error_rate")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    FAILED_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    running: int
    succeeded_last_minute: int
    failed_last_minute: int
    paused: int
    rate_per_minute: float
    error_rate: float
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., running: _Optional[int] = ..., succeeded_last_minute: _Optional[int] = ..., failed_last_minute: _Optional[int] = ..., paused: _Optional[int] = ..., rate_per_minute: _Optional[float] = ..., error_rate: _Optional[float] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunsRequest(_message.Message):
    __slots__ = ("workflow_ids", "statuses", "subsystem_ids", "include_initial_snapshot")
    WORKFLOW_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INITIAL_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    workflow_ids: _containers.RepeatedScalarFieldContainer[str]
    statuses: _containers.RepeatedScalarFieldContainer[_types_pb2.RunStatus]
    subsystem_ids: _containers.RepeatedScalarFieldContainer[str]
    include_initial_snapshot: bool
    def __init__(self, workflow_ids: _Optional[_Iterable[str]] = ..., statuses: _Optional[_Iterable[_Union[_types_pb2.RunStatus, str]]] = ..., subsystem_ids: _Optional[_Iterable[str]] = ..., include_initial_snapshot: _Optional[bool] = ...) -> None: ...

class WatchStatsRequest(_message.Message):
    __slots__ = ("interval_seconds",)
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: int
    def __init__(self, interval_seconds: _Optional[int] = ...) -> None: ...

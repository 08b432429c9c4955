import datetime

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnalyticsFilter(_message.Message):
    __slots__ = ("workflow_id", "subsystem_id", "time_range", "granularity")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    subsystem_id: str
    time_range: _types_pb2.TimeRange
    granularity: str
    def __init__(self, workflow_id: _Optional[str] = ..., subsystem_id: _Optional[str] = ..., time_range: _Optional[_Union[_types_pb2.TimeRange, _Mapping]] = ..., granularity: _Optional[str] = ...) -> None: ...

class DurationSketch(_message.Message):
    __slots__ = ("relative_accuracy", "bins", "zero_count", "count", "min_nanos", "max_nanos")
    class BinsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    RELATIVE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    ZERO_COUNT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MIN_NANOS_FIELD_NUMBER: _ClassVar[int]
    MAX_NANOS_FIELD_NUMBER: _ClassVar[int]
    relative_accuracy: float
    bins: _containers.ScalarMap[int, int]
    zero_count: int
    count: int
    min_nanos: int
    max_nanos: int
    def __init__(self, relative_accuracy: _Optional[float] = ..., bins: _Optional[_Mapping[int, int]] = ..., zero_count: _Optional[int] = ..., count: _Optional[int] = ..., min_nanos: _Optional[int] = ..., max_nanos: _Optional[int] = ...) -> None: ...

class DurationPercentiles(_message.Message):
    __slots__ = ("p50", "p95", "p99")
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    p50: _duration_pb2.Duration
    p95: _duration_pb2.Duration
    p99: _duration_pb2.Duration
    def __init__(self, p50: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p95: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p99: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class FailureRateBucket(_message.Message):
    __slots__ = ("timestamp", "rate", "total_runs", "failed_runs")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RUNS_FIELD_NUMBER: _ClassVar[int]
    FAILED_RUNS_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    rate: float
    total_runs: int
    failed_runs: int
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rate: _Optional[float] = ..., total_runs: _Optional[int] = ..., failed_runs: _Optional[int] = ...) -> None: ...

class GetFailureRateRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: AnalyticsFilter
    def __init__(self, filter: _Optional[_Union[AnalyticsFilter, _Mapping]] = ...) -> None: ...

class GetFailureRateResponse(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[FailureRateBucket]
    def __init__(self, buckets: _Optional[_Iterable[_Union[FailureRateBucket, _Mapping]]] = ...) -> None: ...

class GetLatencyRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: AnalyticsFilter
    def __init__(self, filter: _Optional[_Union[AnalyticsFilter, _Mapping]] = ...) -> None: ...

class GetLatencyResponse(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[LatencyBucket]
    def __init__(self, buckets: _Optional[_Iterable[_Union[LatencyBucket, _Mapping]]] = ...) -> None: ...

class GetStepDurationRequest(_message.Message):
    __slots__ = ("workflow_id", "time_range")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    time_range: _types_pb2.TimeRange
    def __init__(self, workflow_id: _Optional[str] = ..., time_range: _Optional[_Union[_types_pb2.TimeRange, _Mapping]] = ...) -> None: ...

class GetStepDurationResponse(_message.Message):
    __slots__ = ("steps", "bottleneck_threshold")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[StepDurationEntry]
    bottleneck_threshold: _duration_pb2.Duration
    def __init__(self, steps: _Optional[_Iterable[_Union[StepDurationEntry, _Mapping]]] = ..., bottleneck_threshold: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetStepHeatmapRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: AnalyticsFilter
    def __init__(self, filter: _Optional[_Union[AnalyticsFilter, _Mapping]] = ...) -> None: ...

class GetStepHeatmapResponse(_message.Message):
    __slots__ = ("cells", "step_names", "bucket_timestamps")
    CELLS_FIELD_NUMBER: _ClassVar[int]
    STEP_NAMES_FIELD_NUMBER: _ClassVar[int]
    BUCKET_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[HeatmapCell]
    step_names: _containers.RepeatedScalarFieldContainer[str]
    bucket_timestamps: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    def __init__(self, cells: _Optional[_Iterable[_Union[HeatmapCell, _Mapping]]] = ..., step_names: _Optional[_Iterable[str]] = ..., bucket_timestamps: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ...) -> None: ...

class GetThroughputRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: AnalyticsFilter
    def __init__(self, filter: _Optional[_Union[AnalyticsFilter, _Mapping]] = ...) -> None: ...

class GetThroughputResponse(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[ThroughputBucket]
    def __init__(self, buckets: _Optional[_Iterable[_Union[ThroughputBucket, _Mapping]]] = ...) -> None: ...

class HeatmapCell(_message.Message):
    __slots__ = ("step_name", "bucket_start", "failure_rate", "total_executions", "failed_executions", "avg_duration", "duration_sketch")
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    BUCKET_START_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    FAILED_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    AVG_DURATION_FIELD_NUMBER: _ClassVar[int]
    DURATION_SKETCH_FIELD_NUMBER: _ClassVar[int]
    step_name: str
    bucket_start: _timestamp_pb2.Timestamp
    failure_rate: float
    total_executions: int
    failed_executions: int
    avg_duration: _duration_pb2.Duration
    duration_sketch: DurationSketch
    def __init__(self, step_name: _Optional[str] = ..., bucket_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failure_rate: _Optional[float] = ..., total_executions: _Optional[int] = ..., failed_executions: _Optional[int] = ..., avg_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., duration_sketch: _Optional[_Union[DurationSketch, _Mapping]] = ...) -> None: ...

class LatencyBucket(_message.Message):
    __slots__ = ("timestamp", "p50", "p95", "p99", "sketch")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    p50: _duration_pb2.Duration
    p95: _duration_pb2.Duration
    p99: _duration_pb2.Duration
    sketch: DurationSketch
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., p50: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p95: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p99: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., sketch: _Optional[_Union[DurationSketch, _Mapping]] = ...) -> None: ...

class StepDurationEntry(_message.Message):
    __slots__ = ("step_name", "is_bottleneck", "queue_wait", "execution", "total", "sample_count", "trend", "queue_wait_sketch", "execution_sketch", "total_sketch")
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    IS_BOTTLENECK_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TREND_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_SKETCH_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_SKETCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SKETCH_FIELD_NUMBER: _ClassVar[int]
    step_name: str
    is_bottleneck: bool
    queue_wait: DurationPercentiles
    execution: DurationPercentiles
    total: DurationPercentiles
    sample_count: int
    trend: _containers.RepeatedCompositeFieldContainer[StepDurationTrendPoint]
    queue_wait_sketch: DurationSketch
    execution_sketch: DurationSketch
    total_sketch: DurationSketch
    def __init__(self, step_name: _Optional[str] = ..., is_bottleneck: _Optional[bool] = ..., queue_wait: _Optional[_Union[DurationPercentiles, _Mapping]] = ..., execution: _Optional[_Union[DurationPercentiles, _Mapping]] = ..., total: _Optional[_Union[DurationPercentiles, _Mapping]] = ..., sample_count: _Optional[int] = ..., trend: _Optional[_Iterable[_Union[StepDurationTrendPoint, _Mapping]]] = ..., queue_wait_sketch: _Optional[_Union[DurationSketch, _Mapping]] = ..., execution_sketch: _Optional[_Union[DurationSketch, _Mapping]] = ..., total_sketch: _Optional[_Union[DurationSketch, _Mapping]] = ...) -> None: ...

class StepDurationTrendPoint(_message.Message):
    __slots__ = ("timestamp", "p50", "p95", "p99", "sketch")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    p50: _duration_pb2.Duration
    p95: _duration_pb2.Duration
    p99: _duration_pb2.Duration
    sketch: DurationSketch
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., p50: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p95: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p99: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., sketch: _Optional[_Union[DurationSketch, _Mapping]] = ...) -> None: ...

class ThroughputBucket(_message.Message):
    __slots__ = ("timestamp", "succeeded", "failed", "running", "canceled", "total")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CANCELED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    succeeded: int
    failed: int
    running: int
    canceled: int
    total: int
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., running: _Optional[int] = ..., canceled: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

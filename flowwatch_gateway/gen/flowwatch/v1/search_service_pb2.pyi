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

class SearchResultType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_RESULT_TYPE_UNSPECIFIED: _ClassVar[SearchResultType]
    SEARCH_RESULT_TYPE_RUN: _ClassVar[SearchResultType]
    SEARCH_RESULT_TYPE_STEP: _ClassVar[SearchResultType]
    SEARCH_RESULT_TYPE_PAYLOAD: _ClassVar[SearchResultType]
    SEARCH_RESULT_TYPE_LOG: _ClassVar[SearchResultType]

class SearchScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_SCOPE_UNSPECIFIED: _ClassVar[SearchScope]
    SEARCH_SCOPE_ALL: _ClassVar[SearchScope]
    SEARCH_SCOPE_RUNS: _ClassVar[SearchScope]
    SEARCH_SCOPE_STEPS: _ClassVar[SearchScope]
    SEARCH_SCOPE_PAYLOADS: _ClassVar[SearchScope]
    SEARCH_SCOPE_LOGS: _ClassVar[SearchScope]
SEARCH_RESULT_TYPE_UNSPECIFIED: SearchResultType
SEARCH_RESULT_TYPE_RUN: SearchResultType
SEARCH_RESULT_TYPE_STEP: SearchResultType
SEARCH_RESULT_TYPE_PAYLOAD: SearchResultType
SEARCH_RESULT_TYPE_LOG: SearchResultType
SEARCH_SCOPE_UNSPECIFIED: SearchScope
SEARCH_SCOPE_ALL: SearchScope
SEARCH_SCOPE_RUNS: SearchScope
SEARCH_SCOPE_STEPS: SearchScope
SEARCH_SCOPE_PAYLOADS: SearchScope
SEARCH_SCOPE_LOGS: SearchScope

class ExplainRequest(_message.Message):
    __slots__ = ("raw_query",)
    RAW_QUERY_FIELD_NUMBER: _ClassVar[int]
    raw_query: str
    def __init__(self, raw_query: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("valid", "error", "parsed", "normalized_query")
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARSED_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_QUERY_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    error: str
    parsed: ParsedQuery
    normalized_query: str
    def __init__(self, valid: _Optional[bool] = ..., error: _Optional[str] = ..., parsed: _Optional[_Union[ParsedQuery, _Mapping]] = ..., normalized_query: _Optional[str] = ...) -> None: ...

class GetIndexStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetIndexStatsResponse(_message.Message):
    __slots__ = ("indexed_runs", "indexed_steps", "indexed_log_lines", "index_size_bytes", "ingestion_lag_seconds", "last_indexed_at")
    INDEXED_RUNS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_STEPS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_LOG_LINES_FIELD_NUMBER: _ClassVar[int]
    INDEX_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INGESTION_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEXED_AT_FIELD_NUMBER: _ClassVar[int]
    indexed_runs: int
    indexed_steps: int
    indexed_log_lines: int
    index_size_bytes: int
    ingestion_lag_seconds: int
    last_indexed_at: _timestamp_pb2.Timestamp
    def __init__(self, indexed_runs: _Optional[int] = ..., indexed_steps: _Optional[int] = ..., indexed_log_lines: _Optional[int] = ..., index_size_bytes: _Optional[int] = ..., ingestion_lag_seconds: _Optional[int] = ..., last_indexed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HighlightFragments(_message.Message):
    __slots__ = ("fragments",)
    FRAGMENTS_FIELD_NUMBER: _ClassVar[int]
    fragments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fragments: _Optional[_Iterable[str]] = ...) -> None: ...

class ParsedQuery(_message.Message):
    __slots__ = ("free_text", "filters", "sort_field", "sort_descending", "time_range")
    FREE_TEXT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_FIELD_NUMBER: _ClassVar[int]
    SORT_DESCENDING_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    free_text: str
    filters: _containers.RepeatedCompositeFieldContainer[QueryFilter]
    sort_field: str
    sort_descending: bool
    time_range: _types_pb2.TimeRange
    def __init__(self, free_text: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[QueryFilter, _Mapping]]] = ..., sort_field: _Optional[str] = ..., sort_descending: _Optional[bool] = ..., time_range: _Optional[_Union[_types_pb2.TimeRange, _Mapping]] = ...) -> None: ...

class QueryFilter(_message.Message):
    __slots__ = ("field", "operator", "value", "negated")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NEGATED_FIELD_NUMBER: _ClassVar[int]
    field: str
    operator: str
    value: str
    negated: bool
    def __init__(self, field: _Optional[str] = ..., operator: _Optional[str] = ..., value: _Optional[str] = ..., negated: _Optional[bool] = ...) -> None: ...

class ReindexRequest(_message.Message):
    __slots__ = ("workflow_id", "range")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    range: _types_pb2.TimeRange
    def __init__(self, workflow_id: _Optional[str] = ..., range: _Optional[_Union[_types_pb2.TimeRange, _Mapping]] = ...) -> None: ...

class ReindexResponse(_message.Message):
    __slots__ = ("runs_queued",)
    RUNS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    runs_queued: int
    def __init__(self, runs_queued: _Optional[int] = ...) -> None: ...

class SearchFacets(_message.Message):
    __slots__ = ("status", "workflow", "step", "error")
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class WorkflowEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class StepEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ErrorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: _containers.ScalarMap[str, int]
    workflow: _containers.ScalarMap[str, int]
    step: _containers.ScalarMap[str, int]
    error: _containers.ScalarMap[str, int]
    def __init__(self, status: _Optional[_Mapping[str, int]] = ..., workflow: _Optional[_Mapping[str, int]] = ..., step: _Optional[_Mapping[str, int]] = ..., error: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("query", "scope", "pagination", "time_range")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    query: str
    scope: SearchScope
    pagination: _types_pb2.PaginationRequest
    time_range: _types_pb2.TimeRange
    def __init__(self, query: _Optional[str] = ..., scope: _Optional[_Union[SearchScope, str]] = ..., pagination: _Optional[_Union[_types_pb2.PaginationRequest, _Mapping]] = ..., time_range: _Optional[_Union[_types_pb2.TimeRange, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "facets", "pagination", "query_ms")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    FACETS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    QUERY_MS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    facets: SearchFacets
    pagination: _types_pb2.PaginationResponse
    query_ms: int
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., facets: _Optional[_Union[SearchFacets, _Mapping]] = ..., pagination: _Optional[_Union[_types_pb2.PaginationResponse, _Mapping]] = ..., query_ms: _Optional[int] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("id", "type", "run_id", "workflow_id", "score", "highlights", "context")
    class HighlightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HighlightFragments
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HighlightFragments, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHTS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: SearchResultType
    run_id: str
    workflow_id: str
    score: float
    highlights: _containers.MessageMap[str, HighlightFragments]
    context: SearchResultContext
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[SearchResultType, str]] = ..., run_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., score: _Optional[float] = ..., highlights: _Optional[_Mapping[str, HighlightFragments]] = ..., context: _Optional[_Union[SearchResultContext, _Mapping]] = ...) -> None: ...

class SearchResultContext(_message.Message):
    __slots__ = ("run_status", "step_name", "timestamp", "foreign_id")
    RUN_STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_ID_FIELD_NUMBER: _ClassVar[int]
    run_status: _types_pb2.RunStatus
    step_name: str
    timestamp: _timestamp_pb2.Timestamp
    foreign_id: str
    def __init__(self, run_status: _Optional[_Union[_types_pb2.RunStatus, str]] = ..., step_name: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., foreign_id: _Optional[str] = ...) -> None: ...

class SuggestRequest(_message.Message):
    __slots__ = ("field", "prefix", "limit")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    field: str
    prefix: str
    limit: int
    def __init__(self, field: _Optional[str] = ..., prefix: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SuggestResponse(_message.Message):
    __slots__ = ("suggestions",)
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    suggestions: _containers.RepeatedCompositeFieldContainer[Suggestion]
    def __init__(self, suggestions: _Optional[_Iterable[_Union[Suggestion, _Mapping]]] = ...) -> None: ...

class Suggestion(_message.Message):
    __slots__ = ("value", "count")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    value: str
    count: int
    def __init__(self, value: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

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

class DisconnectCommand(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class GatewayMessage(_message.Message):
    __slots__ = ("registered", "ping", "disconnect")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    registered: RegisterResponse
    ping: Heartbeat
    disconnect: DisconnectCommand
    def __init__(self, registered: _Optional[_Union[RegisterResponse, _Mapping]] = ..., ping: _Optional[_Union[Heartbeat, _Mapping]] = ..., disconnect: _Optional[_Union[DisconnectCommand, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("timestamp",)
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("subsystem_id", "subsystem_name", "description", "api_key", "flowwatch_endpoint", "workflows", "capabilities", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBSYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    FLOWWATCH_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    subsystem_id: str
    subsystem_name: str
    description: str
    api_key: str
    flowwatch_endpoint: str
    workflows: _containers.RepeatedCompositeFieldContainer[_types_pb2.WorkflowDefinition]
    capabilities: _types_pb2.Capabilities
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, subsystem_id: _Optional[str] = ..., subsystem_name: _Optional[str] = ..., description: _Optional[str] = ..., api_key: _Optional[str] = ..., flowwatch_endpoint: _Optional[str] = ..., workflows: _Optional[_Iterable[_Union[_types_pb2.WorkflowDefinition, _Mapping]]] = ..., capabilities: _Optional[_Union[_types_pb2.Capabilities, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("accepted", "reject_reason", "heartbeat_interval")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reject_reason: str
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, accepted: _Optional[bool] = ..., reject_reason: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SubsystemMessage(_message.Message):
    __slots__ = ("register", "pong")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    register: RegisterRequest
    pong: Heartbeat
    def __init__(self, register: _Optional[_Union[RegisterRequest, _Mapping]] = ..., pong: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

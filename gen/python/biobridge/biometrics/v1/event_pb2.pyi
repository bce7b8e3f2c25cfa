from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED: ConnectionEventType
CONNECTION_EVENT_TYPE_CONNECTED: ConnectionEventType
CONNECTION_EVENT_TYPE_FRESH: ConnectionEventType
CONNECTION_EVENT_TYPE_REFRESH_FAILED: ConnectionEventType
CONNECTION_EVENT_TYPE_REVOKED: ConnectionEventType
CONNECTION_EVENT_TYPE_STALE: ConnectionEventType
CONNECTION_EVENT_TYPE_UNSPECIFIED: ConnectionEventType
CONNECTION_EVENT_TYPE_USER_ERASED: ConnectionEventType
DESCRIPTOR: _descriptor.FileDescriptor
OPERATION_DELETE: Operation
OPERATION_UNSPECIFIED: Operation
OPERATION_UPSERT: Operation
SOURCE_HEALTHKIT: Source
SOURCE_INTERNAL: Source
SOURCE_OURA: Source
SOURCE_UNSPECIFIED: Source
SOURCE_WHOOP: Source

class BiometricEvent(_message.Message):
    __slots__ = ["event_id", "kind", "occurred_at", "operation", "readings", "received_at", "source", "user_id", "vendor_record_id", "version"]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    VENDOR_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    kind: str
    occurred_at: _timestamp_pb2.Timestamp
    operation: Operation
    readings: _containers.RepeatedCompositeFieldContainer[Reading]
    received_at: _timestamp_pb2.Timestamp
    source: Source
    user_id: str
    vendor_record_id: str
    version: int
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., source: _Optional[_Union[Source, str]] = ..., kind: _Optional[str] = ..., vendor_record_id: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., version: _Optional[int] = ..., occurred_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., received_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., readings: _Optional[_Iterable[_Union[Reading, _Mapping]]] = ...) -> None: ...

class ConnectionEvent(_message.Message):
    __slots__ = ["event_id", "occurred_at", "reason", "sequence", "type", "user_id", "vendor"]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    occurred_at: _timestamp_pb2.Timestamp
    reason: str
    sequence: int
    type: ConnectionEventType
    user_id: str
    vendor: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., vendor: _Optional[str] = ..., type: _Optional[_Union[ConnectionEventType, str]] = ..., occurred_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ["bundle_id", "model", "name"]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    model: str
    name: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., bundle_id: _Optional[str] = ...) -> None: ...

class Reading(_message.Message):
    __slots__ = ["device", "metric", "observed_at", "start_time", "unit", "value"]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    metric: str
    observed_at: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    unit: str
    value: float
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., unit: _Optional[str] = ..., observed_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class Operation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class ConnectionEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

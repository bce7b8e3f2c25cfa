from biobridge.biometrics.v1 import event_pb2 as _event_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

CHANGE_TYPE_REMOVED: ChangeType
CHANGE_TYPE_SNAPSHOT: ChangeType
CHANGE_TYPE_UNSPECIFIED: ChangeType
CHANGE_TYPE_UPDATED: ChangeType
DESCRIPTOR: _descriptor.FileDescriptor
METRIC_KIND_CATEGORY: MetricKind
METRIC_KIND_QUANTITY: MetricKind
METRIC_KIND_UNSPECIFIED: MetricKind

class GetLatestRequest(_message.Message):
    __slots__ = ["metrics", "user_id"]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLatestResponse(_message.Message):
    __slots__ = ["values"]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[LatestValue]
    def __init__(self, values: _Optional[_Iterable[_Union[LatestValue, _Mapping]]] = ...) -> None: ...

class LatestValue(_message.Message):
    __slots__ = ["age", "device", "metric", "observed_at", "source", "unit", "value", "vendor_record_id"]
    AGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VENDOR_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    age: _duration_pb2.Duration
    device: _event_pb2.Device
    metric: str
    observed_at: _timestamp_pb2.Timestamp
    source: _event_pb2.Source
    unit: str
    value: float
    vendor_record_id: str
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., unit: _Optional[str] = ..., observed_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[_event_pb2.Source, str]] = ..., device: _Optional[_Union[_event_pb2.Device, _Mapping]] = ..., age: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., vendor_record_id: _Optional[str] = ...) -> None: ...

class ListMetricsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListMetricsResponse(_message.Message):
    __slots__ = ["metrics"]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    def __init__(self, metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ["description", "kind", "max", "min", "name", "unit"]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    description: str
    kind: MetricKind
    max: float
    min: float
    name: str
    unit: str
    def __init__(self, name: _Optional[str] = ..., unit: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., description: _Optional[str] = ..., kind: _Optional[_Union[MetricKind, str]] = ...) -> None: ...

class QueryReadingsRequest(_message.Message):
    __slots__ = ["end", "metric", "page_size", "page_token", "start", "user_id"]
    END_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    end: _timestamp_pb2.Timestamp
    metric: str
    page_size: int
    page_token: str
    start: _timestamp_pb2.Timestamp
    user_id: str
    def __init__(self, user_id: _Optional[str] = ..., metric: _Optional[str] = ..., start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class QueryReadingsResponse(_message.Message):
    __slots__ = ["next_page_token", "readings"]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    next_page_token: str
    readings: _containers.RepeatedCompositeFieldContainer[StoredReading]
    def __init__(self, readings: _Optional[_Iterable[_Union[StoredReading, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StoredReading(_message.Message):
    __slots__ = ["device", "metric", "observed_at", "source", "start_time", "unit", "value", "vendor_record_id"]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VENDOR_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    device: _event_pb2.Device
    metric: str
    observed_at: _timestamp_pb2.Timestamp
    source: _event_pb2.Source
    start_time: _timestamp_pb2.Timestamp
    unit: str
    value: float
    vendor_record_id: str
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., unit: _Optional[str] = ..., observed_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[_event_pb2.Source, str]] = ..., device: _Optional[_Union[_event_pb2.Device, _Mapping]] = ..., vendor_record_id: _Optional[str] = ..., start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchLatestRequest(_message.Message):
    __slots__ = ["metrics", "user_id"]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchLatestResponse(_message.Message):
    __slots__ = ["change", "value"]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    change: ChangeType
    value: LatestValue
    def __init__(self, change: _Optional[_Union[ChangeType, str]] = ..., value: _Optional[_Union[LatestValue, _Mapping]] = ...) -> None: ...

class ChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class MetricKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

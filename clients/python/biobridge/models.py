"""Plain dataclasses for what BiometricsService returns.

Agent code should not need protobuf: times are timezone-aware UTC datetimes,
ages are timedeltas, enums are short lowercase strings ("healthkit",
"updated"), and values are in the metric's canonical unit (see ListMetrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterator, List, Optional

from ._pb import event_pb2, service_pb2


def _enum_name(enum_type, value: int, prefix: str) -> str:
    try:
        name = enum_type.Name(value)
    except ValueError:  # a value newer than these stubs
        return str(value)
    return name[len(prefix):].lower() if name.startswith(prefix) else name.lower()


def _time(msg, name: str) -> Optional[datetime]:
    if not msg.HasField(name):
        return None
    return getattr(msg, name).ToDatetime(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Device:
    """The app and hardware that produced a value."""

    name: str = ""
    model: str = ""
    bundle_id: str = ""

    @classmethod
    def from_proto(cls, msg) -> Optional["Device"]:
        if not (msg.name or msg.model or msg.bundle_id):
            return None
        return cls(name=msg.name, model=msg.model, bundle_id=msg.bundle_id)


def _device(msg) -> Optional[Device]:
    return Device.from_proto(msg.device) if msg.HasField("device") else None


@dataclass(frozen=True)
class LatestValue:
    """The newest value of one metric for one user.

    ``age`` is how old the value was when the server answered; use
    ``age_at()`` for its age now.
    """

    metric: str
    value: float
    unit: str
    observed_at: Optional[datetime]
    source: str
    age: timedelta
    device: Optional[Device] = None
    vendor_record_id: str = ""

    @classmethod
    def from_proto(cls, msg) -> "LatestValue":
        return cls(
            metric=msg.metric,
            value=msg.value,
            unit=msg.unit,
            observed_at=_time(msg, "observed_at"),
            source=_enum_name(event_pb2.Source, msg.source, "SOURCE_"),
            age=msg.age.ToTimedelta() if msg.HasField("age") else timedelta(0),
            device=_device(msg),
            vendor_record_id=msg.vendor_record_id,
        )

    def age_at(self, now: Optional[datetime] = None) -> timedelta:
        """Age of the value at `now` (default: the current time)."""
        if self.observed_at is None:
            return self.age
        now = now or datetime.now(timezone.utc)
        return max(now - self.observed_at, timedelta(0))


@dataclass(frozen=True)
class Reading:
    """One stored reading (QueryReadings)."""

    metric: str
    value: float
    unit: str
    observed_at: Optional[datetime]
    source: str
    device: Optional[Device] = None
    vendor_record_id: str = ""
    start_time: Optional[datetime] = None

    @classmethod
    def from_proto(cls, msg) -> "Reading":
        return cls(
            metric=msg.metric,
            value=msg.value,
            unit=msg.unit,
            observed_at=_time(msg, "observed_at"),
            source=_enum_name(event_pb2.Source, msg.source, "SOURCE_"),
            device=_device(msg),
            vendor_record_id=msg.vendor_record_id,
            start_time=_time(msg, "start_time"),
        )


@dataclass(frozen=True)
class ReadingsPage:
    """One page of readings, oldest first. Iterating it yields the readings;
    ``next_page_token`` is empty on the last page."""

    readings: List[Reading] = field(default_factory=list)
    next_page_token: str = ""

    def __iter__(self) -> Iterator[Reading]:
        return iter(self.readings)

    def __len__(self) -> int:
        return len(self.readings)

    @classmethod
    def from_proto(cls, msg) -> "ReadingsPage":
        return cls([Reading.from_proto(r) for r in msg.readings], msg.next_page_token)


@dataclass(frozen=True)
class Change:
    """One change seen by a watch.

    kind is "snapshot" (the value when the watch (re)opened), "updated" (a
    new latest value) or "removed" (the metric has no value any more; value
    is None then).
    """

    kind: str
    metric: str
    value: Optional[LatestValue]

    @classmethod
    def from_proto(cls, msg) -> "Change":
        kind = _enum_name(service_pb2.ChangeType, msg.change, "CHANGE_TYPE_")
        value = LatestValue.from_proto(msg.value) if msg.HasField("value") else None
        metric = value.metric if value is not None else ""
        if kind == "removed":
            value = None
        return cls(kind=kind, metric=metric, value=value)


@dataclass(frozen=True)
class Metric:
    """One entry of the metric catalog (ListMetrics)."""

    name: str
    unit: str
    min: float
    max: float
    description: str
    kind: str

    @classmethod
    def from_proto(cls, msg) -> "Metric":
        return cls(
            name=msg.name,
            unit=msg.unit,
            min=msg.min,
            max=msg.max,
            description=msg.description,
            kind=_enum_name(service_pb2.MetricKind, msg.kind, "METRIC_KIND_"),
        )

"""Decoding biometrics.events.v1 (and biometrics.connections.v1) messages.

Works with any Kafka client: pass the message value (bytes) and its headers
as a list of (key, value) pairs (confluent-kafka's msg.headers(),
kafka-python's record.headers) or a dict. See examples/kafka_consumer.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

from ._pb import event_pb2

CONTENT_TYPE = "application/protobuf"
EVENT_TYPE_PREFIX = "biobridge.biometrics.event.v1."
CONNECTION_TYPE_PREFIX = "biobridge.biometrics.connection.v1."

Headers = Union[Mapping[str, Union[bytes, str, None]], Iterable[Tuple[str, Union[bytes, str, None]]], None]


@dataclass(frozen=True)
class CloudEvent:
    """A decoded message: the CloudEvents attributes from the ce_* headers
    and the protobuf payload (BiometricEvent or ConnectionEvent)."""

    id: str
    source: str
    type: str
    time: Optional[datetime]
    specversion: str
    content_type: str
    traceparent: Optional[str]
    data: object
    headers: Dict[str, str] = field(default_factory=dict)

    @property
    def operation(self) -> str:
        """'upsert' or 'delete' for biometric events (the ce_type suffix)."""
        return self.type[len(EVENT_TYPE_PREFIX):] if self.type.startswith(EVENT_TYPE_PREFIX) else ""


def _headers(headers: Headers) -> Dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    out: Dict[str, str] = {}
    for k, v in items:
        k = k.decode() if isinstance(k, bytes) else k
        if k in out:  # the first occurrence wins, as in the Go publisher
            continue
        out[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "")
    return out


def _time(s: str) -> Optional[datetime]:
    if not s:
        return None
    s = s.replace("Z", "+00:00")
    # RFC 3339 with up to nanoseconds; Python keeps microseconds.
    if "." in s:
        head, rest = s.split(".", 1)
        n = 0
        while n < len(rest) and rest[n].isdigit():
            n += 1
        frac, tz = rest[:n], rest[n:]
        s = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    return datetime.fromisoformat(s)


def decode(value: bytes, headers: Headers = None) -> CloudEvent:
    """Decodes one message of biometrics.events.v1 or biometrics.connections.v1.

    The payload type follows ce_type (biobridge.biometrics.event.v1.* →
    BiometricEvent, biobridge.biometrics.connection.v1.* → ConnectionEvent);
    without headers the value is read as a BiometricEvent. Raises ValueError
    for a content type other than application/protobuf or an undecodable
    value.
    """
    h = _headers(headers)
    ctype = h.get("content-type", CONTENT_TYPE)
    if ctype.split(";")[0].strip() != CONTENT_TYPE:
        raise ValueError(f"unexpected content-type {ctype!r}")
    ce_type = h.get("ce_type", "")
    msg_type = event_pb2.ConnectionEvent if ce_type.startswith(CONNECTION_TYPE_PREFIX) else event_pb2.BiometricEvent
    if value is None:
        raise ValueError("message has no value (a dead-letter replay marker?)")
    try:
        data = msg_type.FromString(bytes(value))
    except Exception as exc:  # DecodeError
        raise ValueError(f"value is not a {msg_type.DESCRIPTOR.full_name}: {exc}") from exc
    return CloudEvent(
        id=h.get("ce_id", "") or data.event_id,
        source=h.get("ce_source", ""),
        type=ce_type,
        time=_time(h.get("ce_time", "")),
        specversion=h.get("ce_specversion", ""),
        content_type=ctype,
        traceparent=h.get("traceparent") or None,
        data=data,
        headers=h,
    )


def decode_event(value: bytes, headers: Headers = None) -> "event_pb2.BiometricEvent":
    """The BiometricEvent of a biometrics.events.v1 message."""
    ev = decode(value, headers)
    if not isinstance(ev.data, event_pb2.BiometricEvent):
        raise ValueError(f"message of type {ev.type!r} is not a BiometricEvent")
    return ev.data

"""Retry policy shared by the sync and asyncio clients.

Every BiometricsService RPC is a read, so retrying is always safe; the client
retries UNAVAILABLE (server restarting, connection refused) and
RESOURCE_EXHAUSTED (load shed; the server may say how long to wait in a
google.rpc.RetryInfo detail), with exponential backoff and jitter, inside one
overall deadline per call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import grpc
from google.protobuf import duration_pb2

from .errors import BiobridgeError, error_for

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

# A watch also reconnects after these: the stream was cut by a proxy or a
# server going away, which says nothing about the next attempt.
RECONNECTABLE = RETRYABLE | frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)

_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class RetryPolicy:
    """How unary calls are retried and watches reconnect.

    max_attempts counts the first try (1 disables retries). The n-th retry
    waits about initial_backoff * multiplier**(n-1), capped at max_backoff,
    randomized by +-jitter (a fraction), or longer when the server asks for
    it; a server delay longer than max_server_delay is not waited for.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_server_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy backoffs must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be within 0..1")

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Delay before retry number `retry` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(retry - 1, 0))
        return max(0.0, base * (1 + self.jitter * (2 * rng() - 1)))


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[Tuple[int, object]]:
    """Yields (field number, value) of a protobuf message: ints for varints,
    bytes for length-delimited fields; other wire types are skipped."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
            yield num, v
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            yield num, buf[i : i + n]
            i += n
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")


def retry_info_delay(status_details: bytes) -> Optional[float]:
    """Returns RetryInfo.retry_delay (seconds) of a serialized google.rpc.Status.

    The Debian runtime ships no google.rpc protos, so the few fields needed
    (Status.details = 3, Any.type_url = 1 / value = 2, RetryInfo.retry_delay
    = 1) are read off the wire directly.
    """
    try:
        for num, detail in _fields(status_details):
            if num != 3 or not isinstance(detail, bytes):
                continue
            type_url, value = "", b""
            for n, v in _fields(detail):
                if n == 1 and isinstance(v, bytes):
                    type_url = v.decode("utf-8", "replace")
                elif n == 2 and isinstance(v, bytes):
                    value = v
            if type_url != _RETRY_INFO_TYPE:
                continue
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    d = duration_pb2.Duration.FromString(v)
                    return d.seconds + d.nanos / 1e9
    except ValueError:
        return None
    return None


def _metadata_get(md, key: str):
    if not md:
        return None
    for item in md:
        k, v = (item.key, item.value) if hasattr(item, "key") else item
        if k == key:
            return v
    return None


def server_delay(err: grpc.RpcError) -> Optional[float]:
    """The RetryInfo delay carried by an RpcError's trailers, if any."""
    try:
        md = err.trailing_metadata()
    except Exception:  # an RpcError that is not a Call carries no trailers
        return None
    raw = _metadata_get(md, _STATUS_DETAILS_KEY)
    if isinstance(raw, bytes):
        return retry_info_delay(raw)
    return None


def status_of(err: grpc.RpcError) -> Tuple[grpc.StatusCode, str]:
    try:
        return err.code(), err.details() or ""
    except Exception:
        return grpc.StatusCode.UNKNOWN, str(err)


def translate(err: grpc.RpcError) -> BiobridgeError:
    """Maps an RpcError to the client's exception."""
    code, details = status_of(err)
    return error_for(code, details, server_delay(err))


def next_delay(
    policy: RetryPolicy,
    retry: int,
    err: grpc.RpcError,
    remaining: Optional[float],
    rng: Callable[[], float] = random.random,
) -> Optional[float]:
    """How long to wait before retry number `retry` after err, or None when
    the call must fail now (not retryable, attempts used up, or no time left)."""
    code, _ = status_of(err)
    if code not in RETRYABLE or retry >= policy.max_attempts:
        return None
    delay = policy.backoff(retry, rng)
    asked = server_delay(err)
    if asked is not None:
        if asked > policy.max_server_delay:
            return None
        delay = max(delay, asked)
    if remaining is not None and delay >= remaining:
        return None
    return delay

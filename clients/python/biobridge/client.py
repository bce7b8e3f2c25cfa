"""Synchronous BiometricsService client."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
from google.protobuf import timestamp_pb2

from . import tracing
from ._pb import service_grpc, service_pb2
from ._retry import RECONNECTABLE, RetryPolicy, next_delay, status_of, translate
from .errors import BiobridgeError, Unavailable
from .models import Change, LatestValue, Metric, Reading, ReadingsPage

Metadata = Sequence[Tuple[str, str]]
MaxAge = Union[timedelta, float, int, None]

DEFAULT_TIMEOUT = 10.0

# Keepalive lets a watch notice a dead connection (no RST, e.g. a NAT or a
# killed VM) instead of waiting forever. The bridge's servers allow pings
# every 10 s (pkg/grpcserver); 30 s matches the Go clients (pkg/grpcclient).
CHANNEL_OPTIONS: Tuple[Tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings. All empty means TLS with the system's root certificates.

    root_certificates: PEM CA bundle that signs the server (the bridge's
    TLS_CA_FILE); certificate_chain + private_key: this client's certificate
    for mutual TLS; server_name: expected name in the server certificate when
    it differs from the address host.
    """

    root_certificates: Optional[bytes] = None
    certificate_chain: Optional[bytes] = None
    private_key: Optional[bytes] = None
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("TLSConfig: certificate_chain and private_key go together (mutual TLS)")

    def __repr__(self) -> str:  # never print key material
        return (
            f"TLSConfig(root_certificates={'set' if self.root_certificates else None}, "
            f"client_certificate={'set' if self.certificate_chain else None}, server_name={self.server_name!r})"
        )

    @classmethod
    def from_files(
        cls,
        ca_file: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        server_name: Optional[str] = None,
    ) -> "TLSConfig":
        """Reads PEM files (the bridge's TLS_CA_FILE / TLS_CERT_FILE / TLS_KEY_FILE)."""

        def read(path: Optional[str]) -> Optional[bytes]:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()

        return cls(read(ca_file), read(cert_file), read(key_file), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> List[Tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _host(address: str) -> str:
    a = address
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if a.startswith(scheme):
            a = a[len(scheme):]
            break
    if a.startswith("["):  # [::1]:9103
        return a[1 : a.find("]")] if "]" in a else a
    if a.count(":") == 1:
        return a.rsplit(":", 1)[0]
    return a


def is_loopback(address: str) -> bool:
    """Whether address names this machine (where plaintext is acceptable)."""
    if address.startswith("unix:"):
        return True
    host = _host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_token(token: str) -> str:
    if not token or not isinstance(token, str):
        raise ValueError("service token is empty")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ValueError("service token contains whitespace or control characters")
    return token


def _check_user(user_id: str) -> str:
    if not user_id or not isinstance(user_id, str):
        raise ValueError("user_id is empty")
    return user_id


def _metrics(metrics: Union[str, Iterable[str], None]) -> List[str]:
    if metrics is None:
        return []
    if isinstance(metrics, str):
        return [metrics]
    return list(metrics)


def _max_age(max_age: MaxAge) -> Optional[timedelta]:
    if max_age is None or isinstance(max_age, timedelta):
        return max_age
    return timedelta(seconds=float(max_age))


def _timestamp(t: Optional[datetime]) -> Optional[timestamp_pb2.Timestamp]:
    if t is None:
        return None
    if t.tzinfo is None:  # naive datetimes are taken as UTC, as utcnow() makes them
        t = t.replace(tzinfo=timezone.utc)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t.astimezone(timezone.utc))
    return ts


def latest_request(user_id: str, metrics) -> "service_pb2.GetLatestRequest":
    return service_pb2.GetLatestRequest(user_id=_check_user(user_id), metrics=_metrics(metrics))


def filter_max_age(values: List[LatestValue], max_age: MaxAge) -> List[LatestValue]:
    limit = _max_age(max_age)
    if limit is None:
        return values
    return [v for v in values if v.age <= limit]


def readings_request(user_id, metric, start, end, page_size, page_token) -> "service_pb2.QueryReadingsRequest":
    if not metric:
        raise ValueError("metric is empty")
    req = service_pb2.QueryReadingsRequest(
        user_id=_check_user(user_id), metric=metric, page_size=page_size or 0, page_token=page_token or ""
    )
    if start is not None:
        req.start.CopyFrom(_timestamp(start))
    if end is not None:
        req.end.CopyFrom(_timestamp(end))
    return req


def check_next_token(req, page: ReadingsPage) -> None:
    # A server that hands back the token it was given would page forever.
    if page.next_page_token and page.next_page_token == req.page_token:
        raise BiobridgeError("server returned the same page token twice", grpc.StatusCode.INTERNAL)


class WatchState:
    """Deduplicates a watch's at-least-once delivery across reconnects.

    A change identical to the last one delivered for its metric (same
    observed_at, record, value and source) is dropped: that is what a
    reconnect's snapshot or a re-sent message repeats. Everything else is
    delivered, including an "updated" value older than the previous one:
    the server sends changes in commit order, and an older value after a
    newer one means the newer record was deleted and the previous value is
    latest again (DESIGN §2.4-5).

    keep_newest=True instead keeps only values newer than the last one
    delivered (plus snapshots, the server's current truth after a
    reconnect), for consumers that want a monotonic view and can miss
    restorations until the next reconnect.
    """

    def __init__(self, keep_newest: bool = False) -> None:
        self.keep_newest = keep_newest
        self.known: Dict[str, Optional[LatestValue]] = {}

    @staticmethod
    def _same(a: LatestValue, b: LatestValue) -> bool:
        return (a.observed_at, a.vendor_record_id, a.value, a.source) == (
            b.observed_at,
            b.vendor_record_id,
            b.value,
            b.source,
        )

    def accept(self, change: Change) -> bool:
        prev = self.known.get(change.metric)
        if change.kind == "removed" or change.value is None:
            if change.metric in self.known and prev is None:
                return False
            self.known[change.metric] = None
            return True
        v = change.value
        if prev is not None:
            if self._same(prev, v):
                return False
            if (
                change.kind != "snapshot"
                and self.keep_newest
                and prev.observed_at is not None
                and v.observed_at is not None
                and v.observed_at < prev.observed_at
            ):
                return False
        self.known[change.metric] = v
        return True

    def current(self) -> Dict[str, LatestValue]:
        return {m: v for m, v in self.known.items() if v is not None}


class LatestWatch:
    """Iterator over a user's latest-value changes (Client.watch_latest).

    Reconnects with backoff when the stream breaks or the server restarts,
    and deduplicates what the server sends again. ``close()`` (from any
    thread) ends the iteration; so does leaving a ``with`` block.
    ``current`` holds the newest value per metric seen so far;
    ``reconnects`` counts reconnection attempts.
    """

    def __init__(
        self,
        open_stream: Callable[[], "grpc.Call"],
        policy: RetryPolicy,
        keep_newest: bool = False,
        max_reconnects: Optional[int] = None,
    ) -> None:
        self._open = open_stream
        self._policy = policy
        self._max_reconnects = max_reconnects
        self._state = WatchState(keep_newest)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._call: Optional[grpc.Call] = None
        self._gen = self._run()
        self.reconnects = 0

    @property
    def current(self) -> Dict[str, LatestValue]:
        return self._state.current()

    def __iter__(self) -> "LatestWatch":
        return self

    def __next__(self) -> Change:
        return next(self._gen)

    def __enter__(self) -> "LatestWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _run(self) -> Iterator[Change]:
        failures = 0  # consecutive attempts that delivered nothing
        try:
            while not self._closed.is_set():
                call = self._open()
                with self._lock:
                    self._call = call
                if self._closed.is_set():
                    call.cancel()
                    return
                err: Optional[grpc.RpcError] = None
                try:
                    for msg in call:
                        failures = 0
                        change = Change.from_proto(msg)
                        if self._state.accept(change):
                            yield change
                except grpc.RpcError as e:
                    err = e
                if self._closed.is_set():
                    return
                if err is not None:
                    code, _ = status_of(err)
                    if code not in RECONNECTABLE:
                        raise translate(err) from err
                failures += 1
                if self._max_reconnects is not None and failures > self._max_reconnects:
                    if err is not None:
                        raise Unavailable(
                            f"watch gave up after {self._max_reconnects} reconnects: {status_of(err)[1]}",
                            status_of(err)[0],
                        ) from err
                    raise Unavailable(f"watch gave up after {self._max_reconnects} reconnects", grpc.StatusCode.UNAVAILABLE)
                delay = self._policy.backoff(min(failures, 32))
                if self._closed.wait(delay):
                    return
                self.reconnects += 1
        finally:
            with self._lock:
                call, self._call = self._call, None
            if call is not None:
                call.cancel()


class Client:
    """BiometricsService client.

    address: "host:port" of persistence (devstack: 127.0.0.1:9103).
    token: a service token (SERVICE_TOKENS; devstack: dev-agent-token), sent
    as ``authorization: Bearer <token>`` on every call.
    tls: a TLSConfig, True for TLS with system roots, or None for plaintext,
    which is only allowed to loopback addresses unless insecure=True (the
    token would travel in clear).
    timeout: default overall deadline per unary call, retries included.
    retry: retry policy of unary calls and watch reconnects.
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        tls: Union[TLSConfig, bool, None] = None,
        insecure: bool = False,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        metadata: Metadata = (),
        channel_options: Sequence[Tuple[str, object]] = (),
        channel: Optional[grpc.Channel] = None,
    ) -> None:
        self._token = _check_token(token)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._static_md = [(k.lower(), v) for k, v in metadata]
        self._sleep = time.sleep
        self._owns_channel = channel is None
        if channel is None:
            channel = self._dial(address, tls, insecure, channel_options)
        self._channel = channel
        self._stub = service_grpc.BiometricsServiceStub(channel)

    @staticmethod
    def _dial(address, tls, insecure, channel_options) -> grpc.Channel:
        if not address:
            raise ValueError("address is empty")
        if tls is True:
            tls = TLSConfig()
        opts = list(CHANNEL_OPTIONS) + list(channel_options)
        if isinstance(tls, TLSConfig):
            return grpc.secure_channel(address, tls.credentials(), options=opts + tls.channel_options())
        if tls not in (None, False):
            raise TypeError("tls must be a TLSConfig, True or None")
        if not insecure and not is_loopback(address):
            raise ValueError(
                f"refusing to send the service token in plaintext to {address}: "
                "pass tls=TLSConfig(...) (or tls=True), or insecure=True inside a trusted network"
            )
        return grpc.insecure_channel(address, options=opts)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs) -> "Client":
        """Builds a client from BIOBRIDGE_GRPC_ADDR, BIOBRIDGE_SERVICE_TOKEN and,
        for TLS, BIOBRIDGE_TLS_CA_FILE / BIOBRIDGE_TLS_CERT_FILE /
        BIOBRIDGE_TLS_KEY_FILE / BIOBRIDGE_TLS_SERVER_NAME. Reports every
        missing variable at once."""
        env = os.environ if environ is None else environ
        missing = [k for k in ("BIOBRIDGE_GRPC_ADDR", "BIOBRIDGE_SERVICE_TOKEN") if not env.get(k)]
        if missing:
            raise ValueError("missing environment variables: " + ", ".join(missing))
        tls_vars = ("BIOBRIDGE_TLS_CA_FILE", "BIOBRIDGE_TLS_CERT_FILE", "BIOBRIDGE_TLS_KEY_FILE", "BIOBRIDGE_TLS_SERVER_NAME")
        if any(env.get(k) for k in tls_vars) and "tls" not in kwargs:
            kwargs["tls"] = TLSConfig.from_files(*(env.get(k) or None for k in tls_vars))
        return cls(env["BIOBRIDGE_GRPC_ADDR"], env["BIOBRIDGE_SERVICE_TOKEN"], **kwargs)

    def __repr__(self) -> str:  # the token stays out of reprs and tracebacks
        return f"<biobridge.Client timeout={self._timeout}>"

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _metadata(self, extra: Optional[Metadata]) -> List[Tuple[str, str]]:
        md = [("authorization", "Bearer " + self._token)]
        md.extend(self._static_md)
        md.extend(tracing.outgoing_metadata())
        if extra:
            md.extend((k.lower(), v) for k, v in extra)
        return md

    def _unary(self, method, request, timeout, metadata):
        timeout = self._timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        md = self._metadata(metadata)  # one request id for every attempt
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Unavailable("deadline exceeded while retrying", grpc.StatusCode.DEADLINE_EXCEEDED)
            try:
                return method(request, timeout=remaining, metadata=md)
            except grpc.RpcError as e:
                left = None if deadline is None else deadline - time.monotonic()
                delay = next_delay(self._retry, attempt, e, left)
                if delay is None:
                    raise translate(e) from e
                self._sleep(delay)

    def get_latest(
        self,
        user_id: str,
        metrics: Union[str, Iterable[str], None] = None,
        max_age: MaxAge = None,
        *,
        timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
    ) -> List[LatestValue]:
        """The newest value of each metric (all metrics when None), ordered by
        metric name. Metrics without data are absent, and so are values older
        than max_age (a timedelta or seconds) when given."""
        resp = self._unary(self._stub.GetLatest, latest_request(user_id, metrics), timeout, metadata)
        return filter_max_age([LatestValue.from_proto(v) for v in resp.values], max_age)

    def query_readings(
        self,
        user_id: str,
        metric: str,
        start: Optional[datetime] = None,
        end: Optional[datetime] = None,
        page_size: Optional[int] = None,
        page_token: str = "",
        *,
        timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
    ) -> Iterator[ReadingsPage]:
        """Pages of one metric's readings in [start, end), oldest first. Each
        page is fetched (with retries) when the iterator gets to it; resume
        later with a page's next_page_token as page_token."""
        req = readings_request(user_id, metric, start, end, page_size, page_token)
        while True:
            page = ReadingsPage.from_proto(self._unary(self._stub.QueryReadings, req, timeout, metadata))
            check_next_token(req, page)
            yield page
            if not page.next_page_token:
                return
            req.page_token = page.next_page_token

    def readings(self, user_id: str, metric: str, start=None, end=None, **kwargs) -> Iterator[Reading]:
        """Every reading of query_readings, page after page."""
        for page in self.query_readings(user_id, metric, start, end, **kwargs):
            yield from page

    def list_metrics(self, *, timeout: Optional[float] = None, metadata: Optional[Metadata] = None) -> List[Metric]:
        resp = self._unary(self._stub.ListMetrics, service_pb2.ListMetricsRequest(), timeout, metadata)
        return [Metric.from_proto(m) for m in resp.metrics]

    def watch_latest(
        self,
        user_id: str,
        metrics: Union[str, Iterable[str], None] = None,
        *,
        keep_newest: bool = False,
        max_reconnects: Optional[int] = None,
        metadata: Optional[Metadata] = None,
    ) -> LatestWatch:
        """Changes of the user's latest values: first a snapshot of every
        watched metric, then each change. Reconnects forever by default
        (max_reconnects bounds consecutive failed attempts); see WatchState
        for the deduplication rules. Use as an iterator; close() to stop."""
        req = service_pb2.WatchLatestRequest(user_id=_check_user(user_id), metrics=_metrics(metrics))

        def open_stream():
            return self._stub.WatchLatest(req, metadata=self._metadata(metadata))

        return LatestWatch(open_stream, self._retry, keep_newest=keep_newest, max_reconnects=max_reconnects)

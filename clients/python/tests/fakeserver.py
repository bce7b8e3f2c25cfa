"""A scriptable in-process BiometricsService for client-side tests.

It implements the service from the generated stubs, so the client talks real
gRPC over loopback; each method's behaviour is a queue of steps the test
pushes (a response, a status to abort with, or a stream script).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures
from datetime import datetime, timedelta, timezone
from typing import List, Optional

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from biobridge.biometrics.v1 import biometrics_service_pb2 as pb
from biobridge.biometrics.v1 import biometrics_service_pb2_grpc as pb_grpc
from biobridge.biometrics.v1 import event_pb2

TOKEN = "test-service-token"


def ts(t: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def latest(metric="hrv_rmssd_ms", value=52.0, unit="ms", observed_at=None, age=timedelta(hours=3), record="rec-1"):
    observed_at = observed_at or datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
    d = duration_pb2.Duration()
    d.FromTimedelta(age)
    return pb.LatestValue(
        metric=metric,
        value=value,
        unit=unit,
        observed_at=ts(observed_at),
        source=event_pb2.SOURCE_WHOOP,
        device=event_pb2.Device(name="WHOOP 4.0"),
        age=d,
        vendor_record_id=record,
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def status_with_retry_info(code: grpc.StatusCode, message: str, delay: timedelta) -> bytes:
    """A serialized google.rpc.Status carrying a RetryInfo detail."""
    d = duration_pb2.Duration()
    d.FromTimedelta(delay)
    retry_info = _ld(1, d.SerializeToString())
    any_ = _ld(1, b"type.googleapis.com/google.rpc.RetryInfo") + _ld(2, retry_info)
    return _varint(1 << 3 | 0) + _varint(code.value[0]) + _ld(2, message.encode()) + _ld(3, any_)


class Abort:
    def __init__(self, code: grpc.StatusCode, details: str = "", status_details: Optional[bytes] = None):
        self.code, self.details, self.status_details = code, details, status_details


class Sleep:
    def __init__(self, seconds: float):
        self.seconds = seconds


class Block:
    """Stream step: wait until the test sets the event (or the call ends)."""

    def __init__(self):
        self.event = threading.Event()


class _Status(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


class FakeBiometrics(pb_grpc.BiometricsServiceServicer):
    def __init__(self):
        self.steps = {m: queue.Queue() for m in ("GetLatest", "QueryReadings", "WatchLatest", "ListMetrics")}
        self.calls: List[tuple] = []  # (method, request, metadata dict)
        self.readings: List[pb.StoredReading] = []
        self.lock = threading.Lock()

    def push(self, method: str, *steps):
        for s in steps:
            self.steps[method].put(s)

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c[0] == method)

    def metadata(self, method: str, i: int = -1) -> dict:
        with self.lock:
            return [c[2] for c in self.calls if c[0] == method][i]

    def _begin(self, method, request, context):
        with self.lock:
            self.calls.append((method, request, dict(context.invocation_metadata())))
        md = dict(context.invocation_metadata())
        if md.get("authorization") != "Bearer " + TOKEN:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown service token")
        try:
            return self.steps[method].get_nowait()
        except queue.Empty:
            return None

    @staticmethod
    def _apply(step, context):
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, Abort):
            if step.status_details is not None:
                context.abort_with_status(
                    _Status(step.code, step.details, (("grpc-status-details-bin", step.status_details),))
                )
            context.abort(step.code, step.details)
        return step

    def GetLatest(self, request, context):
        step = self._apply(self._begin("GetLatest", request, context), context)
        return step if step is not None else pb.GetLatestResponse()

    def ListMetrics(self, request, context):
        step = self._apply(self._begin("ListMetrics", request, context), context)
        return step if step is not None else pb.ListMetricsResponse()

    def QueryReadings(self, request, context):
        step = self._apply(self._begin("QueryReadings", request, context), context)
        if step is not None:
            return step
        # Default: page through self.readings with the offset as token.
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = self.readings[start : start + size]
        nxt = str(start + size) if start + size < len(self.readings) else ""
        return pb.QueryReadingsResponse(readings=page, next_page_token=nxt)

    def WatchLatest(self, request, context):
        script = self._begin("WatchLatest", request, context)
        for step in script or []:
            if isinstance(step, Block):
                while not step.event.wait(0.05):
                    if not context.is_active():
                        return
                continue
            msg = self._apply(step, context)
            if msg is not None:
                yield msg


class Server:
    """Starts FakeBiometrics on a loopback port (optionally with TLS)."""

    def __init__(self, credentials: Optional[grpc.ServerCredentials] = None):
        self.fake = FakeBiometrics()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_BiometricsServiceServicer_to_server(self.fake, self.server)
        if credentials is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self):
        self.server.stop(grace=None).wait()

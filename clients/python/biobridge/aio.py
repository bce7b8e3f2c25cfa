"""asyncio BiometricsService client (grpc.aio), for async LangGraph nodes."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import AsyncIterator, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import grpc
from grpc import aio

from . import tracing
from ._pb import service_grpc, service_pb2
from ._retry import RECONNECTABLE, RetryPolicy, next_delay, status_of, translate
from .client import (
    CHANNEL_OPTIONS,
    DEFAULT_TIMEOUT,
    MaxAge,
    Metadata,
    TLSConfig,
    WatchState,
    _check_token,
    _check_user,
    _metrics,
    check_next_token,
    filter_max_age,
    is_loopback,
    latest_request,
    readings_request,
)
from .errors import Unavailable
from .models import Change, LatestValue, Metric, Reading, ReadingsPage


class AsyncLatestWatch:
    """Async iterator over a user's latest-value changes; see LatestWatch.

    ``async with`` it, or call ``aclose()``, to stop; cancelling the task
    that iterates it stops it too.
    """

    def __init__(self, open_stream, policy: RetryPolicy, keep_newest: bool, max_reconnects: Optional[int]) -> None:
        self._open = open_stream
        self._policy = policy
        self._max_reconnects = max_reconnects
        self._state = WatchState(keep_newest)
        self._closed = asyncio.Event()
        self._call = None
        self._gen = self._run()
        self.reconnects = 0

    @property
    def current(self) -> Dict[str, LatestValue]:
        return self._state.current()

    def __aiter__(self) -> "AsyncLatestWatch":
        return self

    async def __anext__(self) -> Change:
        return await self._gen.__anext__()

    async def __aenter__(self) -> "AsyncLatestWatch":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed.set()
        if self._call is not None:
            self._call.cancel()
        try:
            await self._gen.aclose()
        except RuntimeError:
            # Another task is inside the generator; the cancelled call ends it.
            pass

    async def _run(self) -> AsyncIterator[Change]:
        failures = 0
        try:
            while not self._closed.is_set():
                self._call = self._open()
                err = None
                try:
                    async for msg in self._call:
                        failures = 0
                        change = Change.from_proto(msg)
                        if self._state.accept(change):
                            yield change
                except grpc.RpcError as e:
                    err = e
                if self._closed.is_set():
                    return
                if err is not None and status_of(err)[0] not in RECONNECTABLE:
                    raise translate(err) from err
                failures += 1
                if self._max_reconnects is not None and failures > self._max_reconnects:
                    code = status_of(err)[0] if err is not None else grpc.StatusCode.UNAVAILABLE
                    raise Unavailable(f"watch gave up after {self._max_reconnects} reconnects", code)
                try:
                    await asyncio.wait_for(self._closed.wait(), self._policy.backoff(min(failures, 32)))
                    return
                except asyncio.TimeoutError:
                    pass
                self.reconnects += 1
        finally:
            call, self._call = self._call, None
            if call is not None:
                call.cancel()


class AsyncClient:
    """asyncio twin of Client: same arguments, awaitable methods.

    Create it inside the event loop that uses it (grpc.aio channels belong
    to one loop).
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
        channel: Optional[aio.Channel] = None,
    ) -> None:
        self._token = _check_token(token)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._static_md = [(k.lower(), v) for k, v in metadata]
        self._owns_channel = channel is None
        if channel is None:
            if not address:
                raise ValueError("address is empty")
            if tls is True:
                tls = TLSConfig()
            opts = list(CHANNEL_OPTIONS) + list(channel_options)
            if isinstance(tls, TLSConfig):
                channel = aio.secure_channel(address, tls.credentials(), options=opts + tls.channel_options())
            elif tls in (None, False):
                if not insecure and not is_loopback(address):
                    raise ValueError(
                        f"refusing to send the service token in plaintext to {address}: "
                        "pass tls=TLSConfig(...) (or tls=True), or insecure=True inside a trusted network"
                    )
                channel = aio.insecure_channel(address, options=opts)
            else:
                raise TypeError("tls must be a TLSConfig, True or None")
        self._channel = channel
        self._stub = service_grpc.BiometricsServiceStub(channel)

    def __repr__(self) -> str:
        return f"<biobridge.AsyncClient timeout={self._timeout}>"

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _metadata(self, extra: Optional[Metadata]) -> List[Tuple[str, str]]:
        md = [("authorization", "Bearer " + self._token)]
        md.extend(self._static_md)
        md.extend(tracing.outgoing_metadata())
        if extra:
            md.extend((k.lower(), v) for k, v in extra)
        return md

    async def _unary(self, method, request, timeout, metadata):
        timeout = self._timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        md = self._metadata(metadata)
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Unavailable("deadline exceeded while retrying", grpc.StatusCode.DEADLINE_EXCEEDED)
            try:
                return await method(request, timeout=remaining, metadata=md)
            except grpc.RpcError as e:
                left = None if deadline is None else deadline - time.monotonic()
                delay = next_delay(self._retry, attempt, e, left)
                if delay is None:
                    raise translate(e) from e
                await asyncio.sleep(delay)

    async def get_latest(
        self,
        user_id: str,
        metrics: Union[str, Iterable[str], None] = None,
        max_age: MaxAge = None,
        *,
        timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
    ) -> List[LatestValue]:
        resp = await self._unary(self._stub.GetLatest, latest_request(user_id, metrics), timeout, metadata)
        return filter_max_age([LatestValue.from_proto(v) for v in resp.values], max_age)

    async def query_readings(
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
    ) -> AsyncIterator[ReadingsPage]:
        req = readings_request(user_id, metric, start, end, page_size, page_token)
        while True:
            page = ReadingsPage.from_proto(await self._unary(self._stub.QueryReadings, req, timeout, metadata))
            check_next_token(req, page)
            yield page
            if not page.next_page_token:
                return
            req.page_token = page.next_page_token

    async def readings(self, user_id: str, metric: str, start=None, end=None, **kwargs) -> AsyncIterator[Reading]:
        async for page in self.query_readings(user_id, metric, start, end, **kwargs):
            for r in page:
                yield r

    async def list_metrics(self, *, timeout: Optional[float] = None, metadata: Optional[Metadata] = None) -> List[Metric]:
        resp = await self._unary(self._stub.ListMetrics, service_pb2.ListMetricsRequest(), timeout, metadata)
        return [Metric.from_proto(m) for m in resp.metrics]

    def watch_latest(
        self,
        user_id: str,
        metrics: Union[str, Iterable[str], None] = None,
        *,
        keep_newest: bool = False,
        max_reconnects: Optional[int] = None,
        metadata: Optional[Metadata] = None,
    ) -> AsyncLatestWatch:
        req = service_pb2.WatchLatestRequest(user_id=_check_user(user_id), metrics=_metrics(metrics))

        def open_stream():
            return self._stub.WatchLatest(req, metadata=self._metadata(metadata))

        return AsyncLatestWatch(open_stream, self._retry, keep_newest, max_reconnects)

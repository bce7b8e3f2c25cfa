"""AsyncClient against the in-process BiometricsService."""

import asyncio
import unittest
from datetime import datetime, timedelta, timezone

import grpc

from biobridge import AsyncClient, NotFound, RetryPolicy, Unauthenticated, Unavailable, trace_context
from biobridge.biometrics.v1 import biometrics_service_pb2 as pb
from biobridge.summary import biometrics_summary_async

from .fakeserver import TOKEN, Abort, Block, Server, latest

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.01)
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


class AsyncClientTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    async def asyncSetUp(self):
        self.srv.fake.__init__()
        self.client = AsyncClient(self.srv.address, TOKEN, retry=FAST, timeout=5)

    async def asyncTearDown(self):
        await self.client.close()

    async def test_get_latest_with_retry_and_trace(self):
        self.srv.fake.push("GetLatest", Abort(grpc.StatusCode.UNAVAILABLE), pb.GetLatestResponse(values=[latest()]))
        with trace_context(TP, "req-a"):
            got = await self.client.get_latest("user-1", "hrv_rmssd_ms")
        self.assertEqual([(v.metric, v.value) for v in got], [("hrv_rmssd_ms", 52)])
        self.assertEqual(self.srv.fake.count("GetLatest"), 2)
        md = self.srv.fake.metadata("GetLatest")
        self.assertEqual((md["traceparent"], md["x-request-id"]), (TP, "req-a"))

    async def test_errors(self):
        self.srv.fake.push("GetLatest", Abort(grpc.StatusCode.NOT_FOUND, "no such user"))
        with self.assertRaises(NotFound):
            await self.client.get_latest("user-1")
        for _ in range(3):
            self.srv.fake.push("GetLatest", Abort(grpc.StatusCode.UNAVAILABLE))
        with self.assertRaises(Unavailable):
            await self.client.get_latest("user-1")
        bad = AsyncClient(self.srv.address, "wrong", retry=FAST)
        try:
            with self.assertRaises(Unauthenticated):
                await bad.get_latest("user-1")
        finally:
            await bad.close()

    async def test_paging(self):
        self.srv.fake.readings = [pb.StoredReading(metric="steps", value=i) for i in range(5)]
        sizes = [len(p) async for p in self.client.query_readings("user-1", "steps", page_size=2)]
        self.assertEqual(sizes, [2, 2, 1])
        values = [r.value async for r in self.client.readings("user-1", "steps", page_size=4)]
        self.assertEqual(values, [0, 1, 2, 3, 4])

    async def test_summary(self):
        self.srv.fake.push("GetLatest", pb.GetLatestResponse(values=[latest(age=timedelta(hours=3))]))
        self.assertEqual(await biometrics_summary_async(self.client, "user-1"), "HRV 52 ms, 3 h old")

    async def test_watch_reconnects_and_dedupes(self):
        t2 = T0 + timedelta(hours=1)
        self.srv.fake.push(
            "WatchLatest",
            [pb.WatchLatestResponse(change=pb.CHANGE_TYPE_SNAPSHOT, value=latest(value=50)),
             Abort(grpc.StatusCode.UNAVAILABLE)],
            [pb.WatchLatestResponse(change=pb.CHANGE_TYPE_SNAPSHOT, value=latest(value=50)),
             pb.WatchLatestResponse(change=pb.CHANGE_TYPE_UPDATED, value=latest(value=58, observed_at=t2, record="b")),
             Block()],
        )
        got = []
        async with self.client.watch_latest("user-1", max_reconnects=3) as w:
            async for change in w:
                got.append((change.kind, change.value.value))
                if len(got) == 2:
                    break
        self.assertEqual(got, [("snapshot", 50), ("updated", 58)])
        self.assertEqual(w.reconnects, 1)

    async def test_watch_task_cancellation(self):
        self.srv.fake.push("WatchLatest", [Block()])
        w = self.client.watch_latest("user-1")

        async def consume():
            async for _ in w:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        await w.aclose()

    async def test_watch_auth_failure(self):
        bad = AsyncClient(self.srv.address, "wrong", retry=FAST)
        try:
            with self.assertRaises(Unauthenticated):
                async for _ in bad.watch_latest("user-1"):
                    pass
        finally:
            await bad.close()


if __name__ == "__main__":
    unittest.main()

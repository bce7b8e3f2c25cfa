"""Client-side logic against an in-process BiometricsService (fakeserver)."""

import threading
import unittest
from datetime import datetime, timedelta, timezone

import grpc

from biobridge import (
    BiobridgeError,
    Client,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    TLSConfig,
    Unauthenticated,
    Unavailable,
    trace_context,
)
from biobridge.biometrics.v1 import biometrics_service_pb2 as pb
from biobridge.client import WatchState, is_loopback
from biobridge.models import Change

from .fakeserver import TOKEN, Abort, Block, Server, Sleep, latest, status_with_retry_info, ts

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01)
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


def snap(**kw):
    return pb.WatchLatestResponse(change=pb.CHANGE_TYPE_SNAPSHOT, value=latest(**kw))


def upd(**kw):
    return pb.WatchLatestResponse(change=pb.CHANGE_TYPE_UPDATED, value=latest(**kw))


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def setUp(self):
        self.srv.fake.__init__()  # fresh scripts and call log per test
        self.client = Client(self.srv.address, TOKEN, retry=FAST, timeout=5)
        self.sleeps = []
        self.client._sleep = self.sleeps.append
        self.addCleanup(self.client.close)

    # get_latest

    def test_get_latest_sends_auth_and_trace(self):
        self.srv.fake.push("GetLatest", pb.GetLatestResponse(values=[latest(), latest(metric="steps", value=10, unit="count")]))
        with trace_context(TP, "req-42"):
            got = self.client.get_latest("user-1", ["hrv_rmssd_ms", "steps"])
        self.assertEqual([v.metric for v in got], ["hrv_rmssd_ms", "steps"])
        self.assertEqual(got[0].value, 52)
        req = self.srv.fake.calls[-1][1]
        self.assertEqual((req.user_id, list(req.metrics)), ("user-1", ["hrv_rmssd_ms", "steps"]))
        md = self.srv.fake.metadata("GetLatest")
        self.assertEqual(md["authorization"], "Bearer " + TOKEN)
        self.assertEqual(md["traceparent"], TP)
        self.assertEqual(md["x-request-id"], "req-42")

    def test_single_metric_string(self):
        self.client.get_latest("user-1", "steps")
        self.assertEqual(list(self.srv.fake.calls[-1][1].metrics), ["steps"])

    def test_max_age_filters(self):
        self.srv.fake.push(
            "GetLatest",
            pb.GetLatestResponse(values=[latest(age=timedelta(hours=3)), latest(metric="steps", age=timedelta(days=2))]),
        )
        got = self.client.get_latest("user-1", max_age=timedelta(hours=12))
        self.assertEqual([v.metric for v in got], ["hrv_rmssd_ms"])
        self.srv.fake.push("GetLatest", pb.GetLatestResponse(values=[latest(age=timedelta(hours=3))]))
        self.assertEqual(self.client.get_latest("user-1", max_age=3600), [])

    def test_retries_unavailable_with_one_request_id(self):
        self.srv.fake.push("GetLatest", Abort(grpc.StatusCode.UNAVAILABLE), Abort(grpc.StatusCode.UNAVAILABLE),
                           pb.GetLatestResponse(values=[latest()]))
        got = self.client.get_latest("user-1")
        self.assertEqual(len(got), 1)
        self.assertEqual(self.srv.fake.count("GetLatest"), 3)
        self.assertEqual(len(self.sleeps), 2)
        ids = {self.srv.fake.metadata("GetLatest", i)["x-request-id"] for i in range(3)}
        self.assertEqual(len(ids), 1, "retries of one call share its request id")

    def test_gives_up_after_max_attempts(self):
        for _ in range(5):
            self.srv.fake.push("GetLatest", Abort(grpc.StatusCode.UNAVAILABLE, "down"))
        with self.assertRaises(Unavailable) as cm:
            self.client.get_latest("user-1")
        self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.srv.fake.count("GetLatest"), FAST.max_attempts)
        self.assertIsInstance(cm.exception.__cause__, grpc.RpcError)

    def test_server_retry_info_is_honoured(self):
        details = status_with_retry_info(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", timedelta(milliseconds=1500))
        self.srv.fake.push("GetLatest", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", details), pb.GetLatestResponse())
        self.assertEqual(self.client.get_latest("user-1"), [])
        self.assertEqual(len(self.sleeps), 1)
        self.assertGreaterEqual(self.sleeps[0], 1.5)

    def test_server_delay_beyond_deadline_fails_now(self):
        details = status_with_retry_info(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", timedelta(seconds=60))
        self.srv.fake.push("GetLatest", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", details))
        with self.assertRaises(Unavailable) as cm:
            self.client.get_latest("user-1")
        self.assertEqual(cm.exception.retry_after, 60)
        self.assertEqual(self.sleeps, [])

    def test_errors_map_and_are_not_retried(self):
        cases = [
            (grpc.StatusCode.NOT_FOUND, NotFound),
            (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
            (grpc.StatusCode.INTERNAL, BiobridgeError),
        ]
        for code, exc in cases:
            with self.subTest(code=code):
                before = self.srv.fake.count("GetLatest")
                self.srv.fake.push("GetLatest", Abort(code, "nope"))
                with self.assertRaises(exc) as cm:
                    self.client.get_latest("user-1")
                self.assertEqual(cm.exception.code, code)
                self.assertEqual(cm.exception.details, "nope")
                self.assertEqual(self.srv.fake.count("GetLatest") - before, 1)

    def test_bad_token_is_unauthenticated(self):
        with Client(self.srv.address, "wrong-token", retry=FAST) as bad:
            with self.assertRaises(Unauthenticated):
                bad.get_latest("user-1")
        self.assertEqual(self.srv.fake.count("GetLatest"), 1)

    def test_deadline(self):
        self.srv.fake.push("GetLatest", Sleep(2))
        with self.assertRaises(Unavailable) as cm:
            self.client.get_latest("user-1", timeout=0.2)
        self.assertEqual(cm.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_unreachable_server_is_unavailable(self):
        with Client("127.0.0.1:1", TOKEN, retry=FAST, timeout=2) as c:
            with self.assertRaises(Unavailable):
                c.get_latest("user-1")

    def test_argument_validation(self):
        with self.assertRaises(ValueError):
            self.client.get_latest("")
        with self.assertRaises(ValueError):
            list(self.client.query_readings("user-1", ""))
        for token in ["", "two words", "line\nbreak"]:
            with self.subTest(token=token), self.assertRaises(ValueError):
                Client(self.srv.address, token)
        self.assertNotIn(TOKEN, repr(self.client))

    # query_readings

    def test_paging(self):
        self.srv.fake.readings = [
            pb.StoredReading(metric="heart_rate_bpm", value=60 + i, observed_at=ts(T0 + timedelta(minutes=i)))
            for i in range(7)
        ]
        start = datetime(2026, 11, 20, 7, 0)  # naive: taken as UTC
        pages = list(self.client.query_readings("user-1", "heart_rate_bpm", start=start, end=T0 + timedelta(hours=1), page_size=3))
        self.assertEqual([len(p) for p in pages], [3, 3, 1])
        self.assertEqual([r.value for p in pages for r in p], [60 + i for i in range(7)])
        self.assertEqual(pages[-1].next_page_token, "")
        reqs = [c[1] for c in self.srv.fake.calls if c[0] == "QueryReadings"]
        self.assertEqual([r.page_token for r in reqs], ["", "3", "6"])
        self.assertEqual(reqs[0].start.ToDatetime(tzinfo=timezone.utc), datetime(2026, 11, 20, 7, tzinfo=timezone.utc))
        self.assertEqual(reqs[0].end.ToDatetime(tzinfo=timezone.utc), T0 + timedelta(hours=1))
        self.assertTrue(all(r.page_size == 3 and r.metric == "heart_rate_bpm" for r in reqs))
        flat = list(self.client.readings("user-1", "heart_rate_bpm", page_size=5))
        self.assertEqual(len(flat), 7)

    def test_paging_is_lazy_and_retries_per_page(self):
        self.srv.fake.readings = [pb.StoredReading(metric="steps", value=i) for i in range(4)]
        it = self.client.query_readings("user-1", "steps", page_size=2)
        self.assertEqual(self.srv.fake.count("QueryReadings"), 0)
        next(it)
        self.srv.fake.push("QueryReadings", Abort(grpc.StatusCode.UNAVAILABLE))
        self.assertEqual([r.value for r in next(it)], [2, 3])
        self.assertEqual(self.srv.fake.count("QueryReadings"), 3)

    def test_repeated_page_token_stops(self):
        self.srv.fake.push("QueryReadings", pb.QueryReadingsResponse(next_page_token="t"),
                           pb.QueryReadingsResponse(next_page_token="t"))
        with self.assertRaises(BiobridgeError):
            list(self.client.query_readings("user-1", "steps"))

    def test_list_metrics(self):
        self.srv.fake.push("ListMetrics", pb.ListMetricsResponse(metrics=[pb.Metric(name="steps", unit="count", kind=pb.METRIC_KIND_QUANTITY)]))
        self.assertEqual([(m.name, m.kind) for m in self.client.list_metrics()], [("steps", "quantity")])

    # watch_latest

    def watch_script(self):
        t1, t2, t3 = T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)
        self.srv.fake.push(
            "WatchLatest",
            [snap(value=50, observed_at=t1, record="a"), upd(value=55, observed_at=t2, record="b"),
             Abort(grpc.StatusCode.UNAVAILABLE, "server restarting")],
            # After the reconnect the snapshot and a re-sent message repeat b
            # (duplicates); then b is deleted, which makes a latest again;
            # then a real new value.
            [snap(value=55, observed_at=t2, record="b"), upd(value=55, observed_at=t2, record="b"),
             upd(value=50, observed_at=t1, record="a"), upd(value=60, observed_at=t3, record="c"), Block()],
        )

    def test_watch_reconnects_and_dedupes(self):
        self.watch_script()
        w = self.client.watch_latest("user-1", ["hrv_rmssd_ms"], max_reconnects=3)
        got = [next(w) for _ in range(4)]
        w.close()
        self.assertEqual([(c.kind, c.value.value) for c in got],
                         [("snapshot", 50), ("updated", 55), ("updated", 50), ("updated", 60)])
        self.assertEqual(w.reconnects, 1)
        self.assertEqual(w.current["hrv_rmssd_ms"].value, 60)
        self.assertEqual(list(w), [], "a closed watch ends")
        md = self.srv.fake.metadata("WatchLatest")
        self.assertEqual(md["authorization"], "Bearer " + TOKEN)

    def test_watch_keep_newest(self):
        self.watch_script()
        with self.client.watch_latest("user-1", keep_newest=True, max_reconnects=3) as w:
            got = [next(w) for _ in range(3)]
        self.assertEqual([(c.kind, c.value.value) for c in got], [("snapshot", 50), ("updated", 55), ("updated", 60)])

    def test_watch_reconnects_after_clean_end(self):
        self.srv.fake.push("WatchLatest", [snap(value=50)], [upd(value=51, observed_at=T0 + timedelta(minutes=1))])
        with self.client.watch_latest("user-1", max_reconnects=2) as w:
            self.assertEqual([next(w).value.value, next(w).value.value], [50, 51])

    def test_watch_gives_up(self):
        for _ in range(3):
            self.srv.fake.push("WatchLatest", [Abort(grpc.StatusCode.UNAVAILABLE, "down")])
        w = self.client.watch_latest("user-1", max_reconnects=2)
        with self.assertRaises(Unavailable):
            next(w)
        self.assertEqual(self.srv.fake.count("WatchLatest"), 3)

    def test_watch_auth_failure_is_not_retried(self):
        with Client(self.srv.address, "wrong-token", retry=FAST) as bad:
            with self.assertRaises(Unauthenticated):
                next(bad.watch_latest("user-1"))
        self.assertEqual(self.srv.fake.count("WatchLatest"), 1)

    def test_watch_close_from_another_thread(self):
        block = Block()
        self.srv.fake.push("WatchLatest", [snap(value=50), block])
        w = self.client.watch_latest("user-1")
        self.assertEqual(next(w).kind, "snapshot")
        result = {}

        def consume():
            result["rest"] = list(w)

        t = threading.Thread(target=consume)
        t.start()
        w.close()
        t.join(10)
        self.assertFalse(t.is_alive(), "close() must end a blocked iteration")
        self.assertEqual(result["rest"], [])
        block.event.set()


class WatchStateTest(unittest.TestCase):
    def change(self, kind, value=None, observed_at=T0, record="r"):
        msg = pb.WatchLatestResponse(
            change={"snapshot": pb.CHANGE_TYPE_SNAPSHOT, "updated": pb.CHANGE_TYPE_UPDATED, "removed": pb.CHANGE_TYPE_REMOVED}[kind],
            value=latest(value=value or 0, observed_at=observed_at, record=record) if value is not None else pb.LatestValue(metric="hrv_rmssd_ms"),
        )
        return Change.from_proto(msg)

    def test_rules(self):
        later = T0 + timedelta(hours=1)
        s = WatchState()
        self.assertTrue(s.accept(self.change("snapshot", 50)))
        self.assertFalse(s.accept(self.change("updated", 50)), "duplicate")
        self.assertFalse(s.accept(self.change("snapshot", 50)), "duplicate from a reconnect's snapshot")
        self.assertTrue(s.accept(self.change("updated", 51, later, "r2")))
        self.assertTrue(s.accept(self.change("updated", 50)), "restoration after the newer record was deleted")
        self.assertTrue(s.accept(self.change("removed")))
        self.assertFalse(s.accept(self.change("removed")), "duplicate removal")
        self.assertEqual(s.current(), {})

        strict = WatchState(keep_newest=True)
        strict.accept(self.change("updated", 51, later, "r2"))
        self.assertFalse(strict.accept(self.change("updated", 50)), "older than what was delivered")
        self.assertTrue(strict.accept(self.change("snapshot", 50)), "a snapshot is the current truth")


class ConnectionSettingsTest(unittest.TestCase):
    def test_loopback(self):
        for addr, want in [("127.0.0.1:9103", True), ("localhost:9103", True), ("[::1]:9103", True),
                           ("dns:///localhost:9103", True), ("unix:/tmp/s", True),
                           ("persistence:9103", False), ("10.0.0.5:9103", False), ("[2001:db8::1]:443", False)]:
            with self.subTest(addr=addr):
                self.assertEqual(is_loopback(addr), want)

    def test_plaintext_refused_off_loopback(self):
        with self.assertRaisesRegex(ValueError, "plaintext"):
            Client("persistence.internal:9103", TOKEN)
        Client("persistence.internal:9103", TOKEN, insecure=True).close()
        Client("persistence.internal:9103", TOKEN, tls=True).close()

    def test_tls_config(self):
        with self.assertRaises(ValueError):
            TLSConfig(certificate_chain=b"cert")
        self.assertNotIn("secret", repr(TLSConfig(certificate_chain=b"c", private_key=b"secret")))

    def test_from_env(self):
        with self.assertRaisesRegex(ValueError, "BIOBRIDGE_GRPC_ADDR, BIOBRIDGE_SERVICE_TOKEN"):
            Client.from_env({})
        Client.from_env({"BIOBRIDGE_GRPC_ADDR": "127.0.0.1:9103", "BIOBRIDGE_SERVICE_TOKEN": TOKEN}).close()

    def test_retry_policy_validation(self):
        with self.assertRaises(ValueError):
            RetryPolicy(max_attempts=0)
        p = RetryPolicy(initial_backoff=1, multiplier=2, max_backoff=3, jitter=0)
        self.assertEqual([p.backoff(n) for n in (1, 2, 3, 4)], [1, 2, 3, 3])


if __name__ == "__main__":
    unittest.main()

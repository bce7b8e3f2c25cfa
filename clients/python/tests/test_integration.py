"""Integration tests against a running stack (devstack / make run).

Set BIOBRIDGE_GRPC_ADDR, BIOBRIDGE_GATEWAY_URL, BIOBRIDGE_SERVICE_TOKEN and
BIOBRIDGE_USER_TOKEN_SECRET (scripts/test-python.sh prints the devstack
values). Without them these tests are skipped, or fail when
BIOBRIDGE_REQUIRE_INTEGRATION=1. Every test uses its own fresh user id.
"""

import asyncio
import threading
import unittest
import uuid
from datetime import datetime, timedelta, timezone

from biobridge import AsyncClient, Client, Unauthenticated, biometrics_summary, trace_context

from .stack import eventually, hk_sample, push_healthkit, settings, user_jwt

HR = "HKQuantityTypeIdentifierHeartRate"
HRV = "HKQuantityTypeIdentifierHeartRateVariabilitySDNN"


class IntegrationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = settings()
        cls.client = Client(cls.env["BIOBRIDGE_GRPC_ADDR"], cls.env["BIOBRIDGE_SERVICE_TOKEN"], timeout=15)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def new_user(self):
        return f"py-it-{uuid.uuid4()}"

    def push(self, user, samples, deleted=()):
        jwt = user_jwt(self.env["BIOBRIDGE_USER_TOKEN_SECRET"], user)
        out = push_healthkit(self.env["BIOBRIDGE_GATEWAY_URL"], jwt, samples, deleted)
        self.assertEqual(out.get("accepted"), len(samples), out)
        return out

    def guarded_watch(self, user, metrics):
        """A watch that is closed after 60 s whatever happens, so a hung
        stream fails the test instead of hanging the suite."""
        watch = self.client.watch_latest(user, metrics)
        guard = threading.Timer(60, watch.close)
        guard.start()
        self.addCleanup(guard.cancel)
        self.addCleanup(watch.close)
        return watch

    def test_get_latest_after_healthkit_push(self):
        user = self.new_user()
        now = datetime.now(timezone.utc).replace(microsecond=0)
        old, new = now - timedelta(minutes=30), now - timedelta(minutes=2)
        # The newer sample first: latest must follow observation time, not arrival.
        self.push(user, [hk_sample(HR, 64, "count/min", new), hk_sample(HRV, 48, "ms", new)])
        self.push(user, [hk_sample(HR, 80, "count/min", old)])

        with trace_context(request_id=f"py-it-{uuid.uuid4().hex[:8]}"):
            values = eventually(lambda: self.client.get_latest(user, ["heart_rate_bpm", "hrv_sdnn_ms"]))
        by_metric = {v.metric: v for v in values}
        self.assertEqual(sorted(by_metric), ["heart_rate_bpm", "hrv_sdnn_ms"])
        hr = by_metric["heart_rate_bpm"]
        self.assertEqual((hr.value, hr.unit, hr.source), (64, "bpm", "healthkit"))
        self.assertEqual(hr.observed_at, new)
        self.assertEqual(hr.device.name, "Apple Watch")
        self.assertGreaterEqual(hr.age, timedelta(minutes=1))
        self.assertLess(hr.age, timedelta(hours=1))
        self.assertEqual(by_metric["hrv_sdnn_ms"].value, 48)

        self.assertEqual(self.client.get_latest(user, "heart_rate_bpm", max_age=timedelta(seconds=30)), [])
        summary = biometrics_summary(self.client, user, ["hrv_sdnn_ms", "heart_rate_bpm", "steps"])
        self.assertRegex(summary, r"^HRV \(SDNN\) 48 ms, \d+ min old; HR 64 bpm, \d+ min old; no data: steps$")

    def test_unknown_user_has_no_values(self):
        self.assertEqual(self.client.get_latest(self.new_user()), [])

    def test_paging(self):
        user = self.new_user()
        base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
        samples = [hk_sample(HR, 60 + i, "count/min", base + timedelta(minutes=i)) for i in range(25)]
        self.push(user, samples)

        def pages():
            return list(self.client.query_readings(user, "heart_rate_bpm", start=base - timedelta(minutes=1), page_size=10))

        got = eventually(lambda: (lambda p: p if sum(map(len, p)) == 25 else None)(pages()))
        self.assertIsNotNone(got, "25 readings never became readable")
        self.assertEqual([len(p) for p in got], [10, 10, 5])
        self.assertEqual([p.next_page_token == "" for p in got], [False, False, True])
        readings = [r for p in got for r in p]
        self.assertEqual([r.value for r in readings], [60 + i for i in range(25)])
        self.assertEqual([r.observed_at for r in readings], [base + timedelta(minutes=i) for i in range(25)])
        # A time window selects a subset; end is exclusive.
        window = list(self.client.readings(user, "heart_rate_bpm", start=base + timedelta(minutes=5),
                                           end=base + timedelta(minutes=8)))
        self.assertEqual([r.value for r in window], [65, 66, 67])

    def test_watch_sees_a_new_value(self):
        user = self.new_user()
        now = datetime.now(timezone.utc).replace(microsecond=0)
        self.push(user, [hk_sample(HR, 61, "count/min", now - timedelta(minutes=10))])
        eventually(lambda: self.client.get_latest(user, "heart_rate_bpm"))

        watch = self.guarded_watch(user, ["heart_rate_bpm"])
        first = next(watch)
        self.assertEqual((first.kind, first.value.value), ("snapshot", 61))

        self.push(user, [hk_sample(HR, 72, "count/min", now - timedelta(minutes=1))])
        seen = []
        for change in watch:
            seen.append((change.kind, change.value.value if change.value else None))
            if change.kind == "updated" and change.value.value == 72:
                break
        self.assertIn(("updated", 72), seen, "the watch ended without the new value")
        self.assertEqual(watch.current["heart_rate_bpm"].value, 72)

    def test_watch_sees_a_deletion_restore_the_previous_value(self):
        user = self.new_user()
        now = datetime.now(timezone.utc).replace(microsecond=0)
        older = hk_sample(HR, 58, "count/min", now - timedelta(minutes=20))
        newer = hk_sample(HR, 75, "count/min", now - timedelta(minutes=5))
        self.push(user, [older, newer])
        eventually(lambda: self.client.get_latest(user, "heart_rate_bpm"))

        watch = self.guarded_watch(user, ["heart_rate_bpm"])
        first = next(watch)
        self.assertEqual((first.kind, first.value.value), ("snapshot", 75))
        self.push(user, [], deleted=[newer["uuid"]])
        seen = []
        for change in watch:
            seen.append((change.kind, change.value.value if change.value else None))
            if change.kind == "updated" and change.value.value == 58:
                break
        self.assertIn(("updated", 58), seen, "deleting the newest sample must restore the previous value")
        self.assertEqual([v.value for v in self.client.get_latest(user, "heart_rate_bpm")], [58])

        self.push(user, [], deleted=[older["uuid"]])
        for change in watch:
            if change.kind == "removed":
                break
        self.assertEqual(change.kind, "removed")
        self.assertEqual(self.client.get_latest(user, "heart_rate_bpm"), [])

    def test_auth_failure(self):
        with Client(self.env["BIOBRIDGE_GRPC_ADDR"], "not-a-valid-token") as bad:
            with self.assertRaises(Unauthenticated):
                bad.get_latest(self.new_user())
            with self.assertRaises(Unauthenticated):
                next(bad.watch_latest(self.new_user()))
            with self.assertRaises(Unauthenticated):
                list(bad.query_readings(self.new_user(), "heart_rate_bpm"))

    def test_list_metrics(self):
        names = {m.name: m for m in self.client.list_metrics()}
        self.assertIn("hrv_rmssd_ms", names)
        self.assertEqual(names["hrv_rmssd_ms"].unit, "ms")
        self.assertEqual(names["sleep_stage"].kind, "category")

    def test_async_client(self):
        user = self.new_user()
        self.push(user, [hk_sample(HR, 66, "count/min", datetime.now(timezone.utc) - timedelta(minutes=5))])

        async def run():
            async with AsyncClient(self.env["BIOBRIDGE_GRPC_ADDR"], self.env["BIOBRIDGE_SERVICE_TOKEN"]) as c:
                for _ in range(100):
                    got = await c.get_latest(user, "heart_rate_bpm")
                    if got:
                        return got
                    await asyncio.sleep(0.2)
                return []

        got = asyncio.run(run())
        self.assertEqual([(v.metric, v.value) for v in got], [("heart_rate_bpm", 66)])


if __name__ == "__main__":
    unittest.main()

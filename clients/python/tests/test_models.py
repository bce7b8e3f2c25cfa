import unittest
from datetime import datetime, timedelta, timezone

from biobridge import Change, LatestValue, Metric, ReadingsPage
from biobridge.biometrics.v1 import biometrics_service_pb2 as pb
from biobridge.biometrics.v1 import event_pb2

from .fakeserver import latest, ts


class ModelsTest(unittest.TestCase):
    def test_latest_value(self):
        v = LatestValue.from_proto(latest(value=52.5, age=timedelta(hours=3, minutes=5)))
        self.assertEqual(v.metric, "hrv_rmssd_ms")
        self.assertEqual(v.value, 52.5)
        self.assertEqual(v.unit, "ms")
        self.assertEqual(v.observed_at, datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc))
        self.assertIsNotNone(v.observed_at.tzinfo)
        self.assertEqual(v.source, "whoop")
        self.assertEqual(v.age, timedelta(hours=3, minutes=5))
        self.assertEqual(v.device.name, "WHOOP 4.0")
        self.assertEqual(v.vendor_record_id, "rec-1")
        self.assertEqual(v.age_at(datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)), timedelta(hours=2))

    def test_empty_fields(self):
        v = LatestValue.from_proto(pb.LatestValue(metric="steps", value=10))
        self.assertIsNone(v.observed_at)
        self.assertIsNone(v.device)
        self.assertEqual(v.age, timedelta(0))
        self.assertEqual(v.source, "unspecified")

    def test_unknown_enum_value(self):
        v = LatestValue.from_proto(pb.LatestValue(metric="steps", source=99))
        self.assertEqual(v.source, "99")

    def test_change_kinds(self):
        upd = Change.from_proto(pb.WatchLatestResponse(change=pb.CHANGE_TYPE_UPDATED, value=latest()))
        self.assertEqual((upd.kind, upd.metric), ("updated", "hrv_rmssd_ms"))
        self.assertEqual(upd.value.value, 52)
        rem = Change.from_proto(
            pb.WatchLatestResponse(change=pb.CHANGE_TYPE_REMOVED, value=pb.LatestValue(metric="steps"))
        )
        self.assertEqual((rem.kind, rem.metric, rem.value), ("removed", "steps", None))

    def test_readings_page(self):
        msg = pb.QueryReadingsResponse(
            readings=[
                pb.StoredReading(
                    metric="sleep_duration_s",
                    value=25000,
                    unit="s",
                    observed_at=ts(datetime(2026, 11, 20, 7, tzinfo=timezone.utc)),
                    start_time=ts(datetime(2026, 11, 19, 23, tzinfo=timezone.utc)),
                    source=event_pb2.SOURCE_OURA,
                )
            ],
            next_page_token="next",
        )
        page = ReadingsPage.from_proto(msg)
        self.assertEqual(len(page), 1)
        (r,) = list(page)
        self.assertEqual(r.source, "oura")
        self.assertEqual(r.observed_at - r.start_time, timedelta(hours=8))
        self.assertEqual(page.next_page_token, "next")

    def test_metric(self):
        m = Metric.from_proto(pb.Metric(name="sleep_stage", unit="stage", min=0, max=5, kind=pb.METRIC_KIND_CATEGORY))
        self.assertEqual((m.name, m.kind, m.max), ("sleep_stage", "category", 5))


if __name__ == "__main__":
    unittest.main()

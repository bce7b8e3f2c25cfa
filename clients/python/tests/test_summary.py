import unittest
from datetime import datetime, timedelta, timezone

from biobridge import LatestValue, biometrics_summary, format_summary
from biobridge.summary import format_age, format_value

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


def lv(metric, value, unit="", age=timedelta(hours=1)):
    return LatestValue(metric=metric, value=value, unit=unit, observed_at=T0 - age, source="whoop", age=age)


class FakeClient:
    def __init__(self, values):
        self.values = values
        self.calls = []

    def get_latest(self, user_id, metrics=None, max_age=None):
        self.calls.append((user_id, metrics, max_age))
        return [v for v in self.values if not metrics or v.metric in metrics]


class SummaryTest(unittest.TestCase):
    def test_example_from_the_issue(self):
        values = [
            lv("resting_heart_rate_bpm", 51, "bpm", timedelta(hours=9, minutes=40)),
            lv("hrv_rmssd_ms", 52.3, "ms", timedelta(hours=3, minutes=2)),
        ]
        self.assertEqual(format_summary(values), "HRV 52 ms, 3 h old; resting HR 51 bpm, 9 h old")

    def test_values(self):
        cases = [
            (lv("sleep_duration_s", 25920, "s"), "sleep 7h12m"),
            (lv("spo2_pct", 96.5, "%"), "SpO2 96.5%"),
            (lv("recovery_score", 67, "score"), "recovery 67/100"),
            (lv("strain", 12.34, "score"), "strain 12.3/21"),
            (lv("temperature_deviation_c", -0.25, "degC"), "temp deviation -0.2 °C"),
            (lv("distance_m", 5230, "m"), "distance 5.2 km"),
            (lv("distance_m", 830, "m"), "distance 830 m"),
            (lv("steps", 8412, "count"), "steps 8412 steps"),
            (lv("sleep_stage", 5, "stage"), "sleep stage REM"),
            (lv("brand_new_metric", 1.5, "widgets"), "brand_new_metric 1.5 widgets"),
        ]
        for v, want in cases:
            with self.subTest(metric=v.metric):
                self.assertEqual(format_value(v), want)

    def test_ages(self):
        for age, want in [
            (timedelta(seconds=20), "just now"),
            (timedelta(minutes=25, seconds=59), "25 min old"),
            (timedelta(hours=47, minutes=59), "47 h old"),
            (timedelta(days=3, hours=5), "3 d old"),
            (timedelta(seconds=-5), "just now"),
        ]:
            with self.subTest(age=age):
                self.assertEqual(format_age(age), want)

    def test_age_at_now(self):
        v = lv("hrv_rmssd_ms", 52, "ms", timedelta(hours=1))
        self.assertEqual(format_summary([v], now=T0 + timedelta(hours=2)), "HRV 52 ms, 3 h old")

    def test_missing_and_empty(self):
        self.assertEqual(format_summary([]), "no biometrics available")
        self.assertEqual(
            format_summary([lv("hrv_rmssd_ms", 52, "ms")], requested=["hrv_rmssd_ms", "steps"]),
            "HRV 52 ms, 1 h old; no data: steps",
        )

    def test_tool_function(self):
        client = FakeClient([lv("hrv_rmssd_ms", 52, "ms", timedelta(hours=3)), lv("steps", 100, "count")])
        self.assertEqual(biometrics_summary(client, "user-1", "hrv_rmssd_ms"), "HRV 52 ms, 3 h old")
        self.assertEqual(client.calls[-1], ("user-1", ["hrv_rmssd_ms"], None))
        self.assertEqual(biometrics_summary(client, "user-1"), "HRV 52 ms, 3 h old; steps 100 steps, 1 h old")
        self.assertEqual(client.calls[-1], ("user-1", None, None))


if __name__ == "__main__":
    unittest.main()

import copy
import unittest
from datetime import timedelta

from biobridge import LatestValue, Redactor, pseudonym, redact
from biobridge.redact import REDACTED

from .fakeserver import latest

KEY = "test-key"
# Computed by the Go side: logging.NewPseudonymizer([]byte("test-key")).Pseudonym("user-123")
# (and `printf user-123 | openssl dgst -sha256 -hmac test-key`).
GO_PSEUDONYM = "u_e6c6e088f608aa24"


class PseudonymTest(unittest.TestCase):
    def test_matches_go(self):
        self.assertEqual(pseudonym("user-123", KEY), GO_PSEUDONYM)
        self.assertEqual(pseudonym("user-123", KEY.encode()), GO_PSEUDONYM)

    def test_keyed(self):
        self.assertNotEqual(pseudonym("user-123", "other-key"), GO_PSEUDONYM)
        self.assertRegex(pseudonym("x", "k"), r"^u_[0-9a-f]{16}$")

    def test_empty_key_rejected(self):
        with self.assertRaises(ValueError):
            pseudonym("user-123", "")

    def test_random_key_stable_within_redactor(self):
        r = Redactor()
        self.assertEqual(r.pseudonym("a"), r.pseudonym("a"))
        self.assertNotEqual(r.pseudonym("a"), Redactor().pseudonym("a"))


class RedactTest(unittest.TestCase):
    def test_agent_state(self):
        state = {
            "user_id": "user-123",
            "messages": [
                {"role": "user", "content": "How did user-123 sleep?"},
                {"role": "tool", "content": "HRV 52 ms, 3 h old; resting HR 51 bpm, 9 h old; sleep 7h12m, 8 h old"},
            ],
            "biometrics": {"hrv_rmssd_ms": 52, "resting_heart_rate_bpm": 51.0},
            "readings": [{"metric": "steps", "value": 8412, "unit": "count"}, {"metric": "spo2_pct", "value": "97"}],
            "step": 3,
            "flags": (True, None),
        }
        before = copy.deepcopy(state)
        out = redact(state, KEY)
        self.assertEqual(state, before, "input must not change")
        self.assertEqual(out["user_id"], GO_PSEUDONYM)
        self.assertEqual(out["messages"][0]["content"], f"How did {GO_PSEUDONYM} sleep?")
        self.assertEqual(
            out["messages"][1]["content"],
            f"HRV {REDACTED}, 3 h old; resting HR {REDACTED}, 9 h old; sleep {REDACTED}, 8 h old",
        )
        self.assertEqual(out["biometrics"], {"hrv_rmssd_ms": REDACTED, "resting_heart_rate_bpm": REDACTED})
        self.assertEqual(out["readings"][0], {"metric": "steps", "value": REDACTED, "unit": "count"})
        self.assertEqual(out["readings"][1]["value"], REDACTED)
        self.assertEqual(out["step"], 3, "numbers outside biometric keys stay")
        self.assertEqual(out["flags"], (True, None))
        self.assertNotIn("user-123", repr(out))

    def test_dataclasses_and_protos(self):
        v = LatestValue.from_proto(latest(value=52))
        out = redact({"subject": "user-9", "latest": [v], "raw": latest(value=61)}, KEY)
        self.assertEqual(out["latest"][0]["value"], REDACTED)
        self.assertEqual(out["latest"][0]["metric"], "hrv_rmssd_ms")
        self.assertEqual(out["raw"]["value"], REDACTED)
        self.assertEqual(out["subject"], pseudonym("user-9", KEY))
        self.assertNotIn("61", repr(out["raw"]))
        self.assertNotIn("52", repr(out["latest"]))

    def test_explicit_user_ids_in_text_and_keys(self):
        out = redact({"note": "user-42 and user-420", "by_user": {"user-42": 1}}, KEY, user_ids=["user-42", "user-420"])
        self.assertEqual(out["note"], f"{pseudonym('user-42', KEY)} and {pseudonym('user-420', KEY)}")
        self.assertEqual(list(out["by_user"]), [pseudonym("user-42", KEY)])

    def test_text_masking(self):
        cases = {
            "SpO2 97%": f"SpO2 {REDACTED}",
            "readiness 74/100 and strain 12.5/21": f"readiness {REDACTED} and strain {REDACTED}",
            "walked 5.2 km, 8412 steps": f"walked {REDACTED}, {REDACTED}",
            "skin temp 33.4 °C": f"skin temp {REDACTED}",
            "sleep stage REM": f"sleep {REDACTED}",
            "updated 5 min old": "updated 5 min old",
            "node 3 of 7 ran": "node 3 of 7 ran",
        }
        for text, want in cases.items():
            with self.subTest(text=text):
                self.assertEqual(redact(text, KEY), want)
        self.assertEqual(redact("SpO2 97%", KEY, mask_text=False), "SpO2 97%")

    def test_pydantic_like_objects(self):
        class Msg:
            def model_dump(self):
                return {"content": "resting HR 51 bpm", "user_id": "user-123"}

        out = redact([Msg()], KEY)
        self.assertEqual(out, [{"content": f"resting HR {REDACTED}", "user_id": GO_PSEUDONYM}])

    def test_timedelta_and_sets(self):
        out = redact({"values": {1, 2}, "age": timedelta(hours=1)}, KEY)
        self.assertEqual(out["values"], [REDACTED, REDACTED])
        self.assertEqual(out["age"], "1:00:00")


if __name__ == "__main__":
    unittest.main()

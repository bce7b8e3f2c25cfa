import unittest
from datetime import datetime, timezone

from biobridge import kafka
from biobridge.biometrics.v1 import event_pb2

from .fakeserver import ts

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def event():
    return event_pb2.BiometricEvent(
        event_id="ev-1",
        user_id="user-1",
        source=event_pb2.SOURCE_WHOOP,
        kind="recovery",
        vendor_record_id="rec-1",
        operation=event_pb2.OPERATION_UPSERT,
        version=2,
        occurred_at=ts(datetime(2026, 11, 20, 8, tzinfo=timezone.utc)),
        readings=[event_pb2.Reading(metric="recovery_score", value=67, unit="score")],
    )


# Headers exactly as services/publisher/kafka.BuildMessage writes them.
HEADERS = [
    (b"ce_specversion", b"1.0"),
    (b"ce_id", b"ev-1"),
    (b"ce_source", b"/biobridge/whoop"),
    (b"ce_type", b"biobridge.biometrics.event.v1.upsert"),
    (b"ce_time", b"2026-11-20T08:00:00.123456789Z"),
    (b"content-type", b"application/protobuf"),
    (b"traceparent", TP.encode()),
]


class KafkaTest(unittest.TestCase):
    def test_biometric_event(self):
        msg = kafka.decode(event().SerializeToString(), HEADERS)
        self.assertEqual(msg.id, "ev-1")
        self.assertEqual(msg.source, "/biobridge/whoop")
        self.assertEqual(msg.operation, "upsert")
        self.assertEqual(msg.time, datetime(2026, 11, 20, 8, 0, 0, 123456, tzinfo=timezone.utc))
        self.assertEqual(msg.traceparent, TP)
        self.assertEqual(msg.data, event())
        self.assertEqual(msg.data.readings[0].metric, "recovery_score")

    def test_decode_event_with_str_header_dict(self):
        headers = {k.decode(): v.decode() for k, v in HEADERS}
        self.assertEqual(kafka.decode_event(event().SerializeToString(), headers).user_id, "user-1")

    def test_connection_event(self):
        ce = event_pb2.ConnectionEvent(
            event_id="ev-2", user_id="user-2", vendor="oura", type=event_pb2.CONNECTION_EVENT_TYPE_REFRESH_FAILED
        )
        headers = [("ce_type", b"biobridge.biometrics.connection.v1.refresh_failed"), ("ce_time", b"2026-11-20T09:00:00Z")]
        msg = kafka.decode(ce.SerializeToString(), headers)
        self.assertIsInstance(msg.data, event_pb2.ConnectionEvent)
        self.assertEqual(msg.data.vendor, "oura")
        self.assertEqual(msg.operation, "")
        self.assertEqual(msg.time, datetime(2026, 11, 20, 9, tzinfo=timezone.utc))
        with self.assertRaises(ValueError):
            kafka.decode_event(ce.SerializeToString(), headers)

    def test_bad_messages(self):
        with self.assertRaisesRegex(ValueError, "content-type"):
            kafka.decode(b"", [("content-type", b"application/json")])
        with self.assertRaisesRegex(ValueError, "BiometricEvent"):
            kafka.decode(b"\xff\xff\xff", HEADERS)
        with self.assertRaisesRegex(ValueError, "no value"):
            kafka.decode(None, HEADERS)


if __name__ == "__main__":
    unittest.main()

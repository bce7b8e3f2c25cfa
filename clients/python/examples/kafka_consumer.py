"""Decoding biometrics.events.v1 messages in Python.

Each message: key = user id, value = binary protobuf
biobridge.biometrics.v1.BiometricEvent, headers = CloudEvents binary
binding (ce_specversion, ce_id, ce_source, ce_type, ce_time, content-type)
plus W3C traceparent. biobridge.kafka.decode() turns (value, headers) into
a CloudEvent with the decoded payload; it works with any Kafka client.

With confluent-kafka (pip install confluent-kafka) against `make run`'s
embedded broker:

    PYTHONPATH=clients/python /usr/bin/python3 clients/python/examples/kafka_consumer.py 127.0.0.1:9092

Without a Kafka client installed it decodes a message built in-process,
exactly as the publisher writes it.
"""

import sys

from biobridge import kafka
from biobridge.biometrics.v1 import event_pb2


def handle(value: bytes, headers) -> None:
    msg = kafka.decode(value, headers)
    ev = msg.data  # a BiometricEvent (or a ConnectionEvent on biometrics.connections.v1)
    # ev.user_id is PHI: log it only pseudonymized (biobridge.pseudonym).
    print(f"{msg.type} id={msg.id} source={msg.source} at={msg.time} traceparent={msg.traceparent}")
    if msg.operation == "delete":
        print(f"  record {ev.vendor_record_id} v{ev.version} deleted")
        return
    for r in ev.readings:
        print(f"  {r.metric} = {r.value:g} {r.unit} at {r.observed_at.ToDatetime().isoformat()}Z")


def consume(brokers: str) -> None:
    from confluent_kafka import Consumer  # type: ignore

    c = Consumer({"bootstrap.servers": brokers, "group.id": "biobridge-example", "auto.offset.reset": "earliest"})
    c.subscribe(["biometrics.events.v1"])
    try:
        while True:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            handle(m.value(), m.headers() or [])
    finally:
        c.close()


def offline_demo() -> None:
    ev = event_pb2.BiometricEvent(
        event_id="3f1c2a9e-0000-4000-8000-000000000001",
        user_id="demo-user",
        source=event_pb2.SOURCE_HEALTHKIT,
        kind="sample",
        vendor_record_id="demo-hr-1",
        operation=event_pb2.OPERATION_UPSERT,
        version=1,
        readings=[event_pb2.Reading(metric="heart_rate_bpm", value=64, unit="bpm")],
    )
    ev.readings[0].observed_at.FromJsonString("2026-11-20T08:00:00Z")
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ev.event_id.encode()),
        ("ce_source", b"/biobridge/healthkit"),
        ("ce_type", b"biobridge.biometrics.event.v1.upsert"),
        ("ce_time", b"2026-11-20T08:00:00Z"),
        ("content-type", b"application/protobuf"),
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ]
    handle(ev.SerializeToString(), headers)


if __name__ == "__main__":
    try:
        consume(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092")
    except ImportError:
        print("confluent-kafka is not installed; decoding an in-process example instead\n")
        offline_demo()

"""The examples run: the LangGraph node against the in-process server, the
Kafka example on its built-in message."""

import contextlib
import importlib.util
import io
import os
import unittest
from datetime import timedelta
from unittest import mock

import grpc

from biobridge.biometrics.v1 import biometrics_service_pb2 as pb

from .fakeserver import TOKEN, Abort, Server, latest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class ExamplesTest(unittest.TestCase):
    def test_langgraph_node(self):
        srv = Server()
        self.addCleanup(srv.stop)
        env = {"BIOBRIDGE_GRPC_ADDR": srv.address, "BIOBRIDGE_SERVICE_TOKEN": TOKEN, "LOG_PSEUDONYM_KEY": "k"}
        with mock.patch.dict(os.environ, env):
            mod = load("langgraph_node")
        self.addCleanup(mod.CLIENT.close)
        srv.fake.push("GetLatest", pb.GetLatestResponse(values=[latest(age=timedelta(hours=3)), latest(metric="steps", age=timedelta(days=3))]))
        with self.assertLogs("agent", "INFO") as logs:
            out = mod.biometrics_node({"user_id": "user-123", "messages": []})
        self.assertEqual(out["biometrics"], "HRV 52 ms, 3 h old")
        self.assertEqual(out["messages"][-1]["content"], "HRV 52 ms, 3 h old")
        logged = "\n".join(logs.output)
        self.assertNotIn("user-123", logged)
        self.assertNotIn("52 ms", logged)
        req = srv.fake.calls[-1][1]
        self.assertEqual(req.user_id, "user-123")
        self.assertEqual(list(req.metrics), [])

        srv.fake.push("GetLatest", *[Abort(grpc.StatusCode.UNAVAILABLE, "down") for _ in range(4)])
        out = mod.biometrics_node({"user_id": "user-123"})
        self.assertEqual(out["biometrics"], "biometrics temporarily unavailable")

    def test_kafka_example(self):
        mod = load("kafka_consumer")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            mod.offline_demo()
        self.assertIn("biobridge.biometrics.event.v1.upsert", buf.getvalue())
        self.assertIn("heart_rate_bpm = 64 bpm", buf.getvalue())


if __name__ == "__main__":
    unittest.main()

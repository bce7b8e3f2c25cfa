import asyncio
import contextvars
import sys
import threading
import types
import unittest

from biobridge import current_trace_context, trace_context
from biobridge.tracing import from_headers, new_traceparent, outgoing_metadata, valid_traceparent

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class TracingTest(unittest.TestCase):
    def test_valid_traceparent(self):
        self.assertTrue(valid_traceparent(TP))
        self.assertTrue(valid_traceparent(new_traceparent()))
        for bad in ["", None, "00-xyz", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"]:
            with self.subTest(bad=bad):
                self.assertFalse(valid_traceparent(bad))

    def test_metadata_inside_context(self):
        with trace_context(traceparent=TP, request_id="req-1", tracestate="v=1") as ctx:
            self.assertIs(current_trace_context(), ctx)
            md = dict(outgoing_metadata())
        self.assertEqual(md, {"traceparent": TP, "tracestate": "v=1", "x-request-id": "req-1"})
        self.assertIsNone(current_trace_context())

    def test_without_context(self):
        md = dict(outgoing_metadata())
        self.assertNotIn("traceparent", md)
        self.assertRegex(md["x-request-id"], r"^[0-9a-f]{32}$")
        self.assertNotEqual(md["x-request-id"], dict(outgoing_metadata())["x-request-id"])

    def test_invalid_input_starts_new_trace(self):
        with trace_context(traceparent="garbage", request_id="bad id\n", tracestate="v=1") as ctx:
            self.assertTrue(valid_traceparent(ctx.traceparent))
            self.assertIsNone(ctx.tracestate)
            self.assertRegex(ctx.request_id, r"^[0-9a-f]{32}$")
        with trace_context(start_trace=False) as ctx:
            self.assertIsNone(ctx.traceparent)
            self.assertNotIn("traceparent", dict(outgoing_metadata()))

    def test_nesting_restores(self):
        with trace_context(TP, "outer"):
            with trace_context(new_traceparent(), "inner"):
                self.assertEqual(current_trace_context().request_id, "inner")
            self.assertEqual(current_trace_context().request_id, "outer")

    def test_from_headers(self):
        with from_headers({"TraceParent": TP, "X-Request-Id": "abc"}) as ctx:
            self.assertEqual((ctx.traceparent, ctx.request_id), (TP, "abc"))

    def test_threads_with_copied_context_and_tasks(self):
        seen = {}
        with trace_context(TP, "req-x"):
            ctx = contextvars.copy_context()
            t = threading.Thread(target=lambda: ctx.run(lambda: seen.update(thread=dict(outgoing_metadata()))))
            t.start()
            t.join()

            async def task():
                return dict(outgoing_metadata())

            seen["task"] = asyncio.run(task())
        for where in ("thread", "task"):
            self.assertEqual(seen[where]["traceparent"], TP, where)
            self.assertEqual(seen[where]["x-request-id"], "req-x", where)

    def test_opentelemetry_used_when_present(self):
        otel_tp = "00-11111111111111111111111111111111-2222222222222222-01"
        prop = types.ModuleType("opentelemetry.propagate")
        prop.inject = lambda carrier: carrier.update(traceparent=otel_tp)
        pkg = types.ModuleType("opentelemetry")
        pkg.propagate = prop
        saved = {k: sys.modules.get(k) for k in ("opentelemetry", "opentelemetry.propagate")}
        sys.modules.update({"opentelemetry": pkg, "opentelemetry.propagate": prop})
        try:
            self.assertEqual(dict(outgoing_metadata())["traceparent"], otel_tp)
            with trace_context(TP):  # an explicit context wins
                self.assertEqual(dict(outgoing_metadata())["traceparent"], TP)
        finally:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v


if __name__ == "__main__":
    unittest.main()

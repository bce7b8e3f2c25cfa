"""Trace and request id propagation from agent code into gRPC metadata.

Wrap one graph execution in ``trace_context(...)`` and every client call made
inside it (any thread or asyncio task that inherits the context, as LangGraph
nodes do) sends the same W3C ``traceparent`` and ``x-request-id``, so the
bridge's spans and logs join the agent's trace::

    with trace_context(traceparent=headers.get("traceparent"),
                       request_id=headers.get("x-request-id")):
        graph.invoke(state)

Without an explicit context the client uses the active OpenTelemetry span
when the opentelemetry package is installed, and otherwise sends a fresh
request id per call (the same across that call's retries).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Iterator, List, Mapping, Optional, Tuple

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
REQUEST_ID = "x-request-id"

_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# Request ids end up in log lines: keep them short and printable.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def valid_traceparent(value: Optional[str]) -> bool:
    """Whether value is a W3C traceparent this client will forward."""
    if not value:
        return False
    m = _TRACEPARENT_RE.match(value.strip().lower())
    if not m:
        return False
    version, trace_id, span_id, _ = m.groups()
    return version != "ff" and trace_id != "0" * 32 and span_id != "0" * 16


def new_traceparent(sampled: bool = True) -> str:
    """A traceparent that starts a new trace."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{'01' if sampled else '00'}"


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class TraceContext:
    traceparent: Optional[str] = None
    tracestate: Optional[str] = None
    request_id: Optional[str] = None


_current: contextvars.ContextVar[Optional[TraceContext]] = contextvars.ContextVar(
    "biobridge_trace_context", default=None
)


def current_trace_context() -> Optional[TraceContext]:
    """The context set by the innermost enclosing trace_context(), if any."""
    return _current.get()


@contextlib.contextmanager
def trace_context(
    traceparent: Optional[str] = None,
    request_id: Optional[str] = None,
    tracestate: Optional[str] = None,
    *,
    start_trace: bool = True,
) -> Iterator[TraceContext]:
    """Sets the trace context for client calls made inside the block.

    An invalid or missing traceparent starts a new trace (unless start_trace
    is False, in which case none is sent); a missing request id gets a new
    one. Yields the context in effect, e.g. to log its request id.
    """
    if valid_traceparent(traceparent):
        tp = traceparent.strip().lower()  # type: ignore[union-attr]
        ts = tracestate
    else:
        tp = new_traceparent() if start_trace else None
        ts = None  # tracestate is meaningless without its traceparent
    rid = request_id if request_id and _REQUEST_ID_RE.match(request_id) else new_request_id()
    ctx = TraceContext(traceparent=tp, tracestate=ts, request_id=rid)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def from_headers(headers: Mapping[str, str], *, start_trace: bool = True):
    """trace_context() fed from incoming HTTP headers (case-insensitive) or
    any mapping with traceparent / tracestate / x-request-id keys."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    return trace_context(
        traceparent=lower.get(TRACEPARENT),
        request_id=lower.get(REQUEST_ID) or lower.get("request_id"),
        tracestate=lower.get(TRACESTATE),
        start_trace=start_trace,
    )


def _otel_headers() -> List[Tuple[str, str]]:
    try:
        from opentelemetry import propagate  # type: ignore
    except ImportError:
        return []
    carrier: dict = {}
    try:
        propagate.inject(carrier)
    except Exception:  # tracing must never break a read
        return []
    out = []
    tp = carrier.get(TRACEPARENT)
    if valid_traceparent(tp):
        out.append((TRACEPARENT, tp))
        if carrier.get(TRACESTATE):
            out.append((TRACESTATE, carrier[TRACESTATE]))
    return out


def outgoing_metadata() -> List[Tuple[str, str]]:
    """traceparent, tracestate and x-request-id for one outgoing call."""
    ctx = _current.get()
    md: List[Tuple[str, str]] = []
    if ctx is not None and ctx.traceparent:
        md.append((TRACEPARENT, ctx.traceparent))
        if ctx.tracestate:
            md.append((TRACESTATE, ctx.tracestate))
    else:
        md.extend(_otel_headers())
    rid = ctx.request_id if ctx is not None and ctx.request_id else new_request_id()
    md.append((REQUEST_ID, rid))
    return md

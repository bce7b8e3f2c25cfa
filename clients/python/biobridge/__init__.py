"""Python client for Biometric Bridge's BiometricsService (LangGraph workers).

Quick start (with `make run` up)::

    from biobridge import Client
    client = Client("127.0.0.1:9103", token="dev-agent-token")
    for v in client.get_latest("demo-user"):
        print(v.metric, v.value, v.unit, v.age)

The generated protobuf stubs (``biobridge.biometrics.v1``) live in
gen/python; this package and those stubs share the top-level name
``biobridge``, so the two directories merge into one package.
"""

import os as _os
import pkgutil as _pkgutil

# Merge every biobridge/ directory on sys.path (the generated stubs in
# gen/python are an __init__-less portion of this package)...
__path__ = _pkgutil.extend_path(__path__, __name__)
# ...and, in a repository checkout, find gen/python next to clients/python so
# that PYTHONPATH=clients/python is all a developer has to set.
_gen = _os.path.normpath(
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "..", "..", "gen", "python", "biobridge")
)
if _os.path.isdir(_gen) and _gen not in __path__:
    __path__.append(_gen)

from .errors import (  # noqa: E402
    BiobridgeError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from .models import Change, Device, LatestValue, Metric, Reading, ReadingsPage  # noqa: E402
from ._retry import RetryPolicy  # noqa: E402
from .client import Client, LatestWatch, TLSConfig  # noqa: E402
from .aio import AsyncClient  # noqa: E402
from .tracing import current_trace_context, trace_context  # noqa: E402
from .redact import Redactor, pseudonym, redact  # noqa: E402
from .summary import biometrics_summary, format_summary  # noqa: E402

__all__ = [
    "AsyncClient",
    "BiobridgeError",
    "Change",
    "Client",
    "Device",
    "InvalidArgument",
    "LatestValue",
    "LatestWatch",
    "Metric",
    "NotFound",
    "PermissionDenied",
    "Reading",
    "ReadingsPage",
    "Redactor",
    "RetryPolicy",
    "TLSConfig",
    "Unauthenticated",
    "Unavailable",
    "biometrics_summary",
    "current_trace_context",
    "format_summary",
    "pseudonym",
    "redact",
    "trace_context",
]

"""Exceptions: one BiobridgeError hierarchy instead of raw grpc.RpcError.

Agent code catches what it can act on (Unauthenticated: fix the token;
NotFound: no such user or metric; Unavailable: try later) and lets the rest
surface as BiobridgeError. The original grpc.RpcError stays reachable as
``__cause__``.
"""

from __future__ import annotations

from typing import Optional

import grpc


class BiobridgeError(Exception):
    """Any error of a BiometricsService call.

    ``code`` is the gRPC status code, ``details`` the server's message and
    ``retry_after`` the server's suggested delay in seconds (RetryInfo), if any.
    """

    def __init__(
        self,
        details: str = "",
        code: Optional[grpc.StatusCode] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        self.code = code
        self.details = details
        self.retry_after = retry_after
        name = code.name if code is not None else "ERROR"
        super().__init__(f"{name}: {details}" if details else name)


class Unauthenticated(BiobridgeError):
    """The service token is missing, unknown or malformed (UNAUTHENTICATED)."""


class PermissionDenied(BiobridgeError):
    """The service token may not read this user or metric (PERMISSION_DENIED)."""


class NotFound(BiobridgeError):
    """The user or metric does not exist (NOT_FOUND)."""


class InvalidArgument(BiobridgeError):
    """The request was malformed, e.g. an unknown metric or a bad page token."""


class Unavailable(BiobridgeError):
    """The service could not answer in time: UNAVAILABLE, DEADLINE_EXCEEDED or
    RESOURCE_EXHAUSTED (shed under load), after the client's retries."""


_BY_CODE = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
}


def error_for(code: grpc.StatusCode, details: str = "", retry_after: Optional[float] = None) -> BiobridgeError:
    """Returns the exception for a status code."""
    return _BY_CODE.get(code, BiobridgeError)(details, code, retry_after)

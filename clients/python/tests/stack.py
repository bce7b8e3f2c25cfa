"""Helpers for the integration tests: the running stack's settings, user
JWTs and HealthKit pushes through the gateway (stdlib only)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import unittest
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import List, Optional

ENV_VARS = ("BIOBRIDGE_GRPC_ADDR", "BIOBRIDGE_GATEWAY_URL", "BIOBRIDGE_SERVICE_TOKEN", "BIOBRIDGE_USER_TOKEN_SECRET")


def settings() -> dict:
    """The stack's settings from the environment, or SkipTest when they are
    absent, unless BIOBRIDGE_REQUIRE_INTEGRATION=1, which makes that a failure."""
    missing = [k for k in ENV_VARS if not os.environ.get(k)]
    if missing:
        msg = (
            "integration tests need a running stack (make run) and "
            + ", ".join(missing)
            + " (devstack: BIOBRIDGE_GRPC_ADDR=127.0.0.1:9103 BIOBRIDGE_GATEWAY_URL=http://127.0.0.1:8080 "
            "BIOBRIDGE_SERVICE_TOKEN=dev-agent-token "
            "BIOBRIDGE_USER_TOKEN_SECRET=dev-user-token-secret-not-for-production-0123456789)"
        )
        if os.environ.get("BIOBRIDGE_REQUIRE_INTEGRATION") == "1":
            raise AssertionError("BIOBRIDGE_REQUIRE_INTEGRATION=1 but " + msg)
        raise unittest.SkipTest(msg)
    return {k: os.environ[k] for k in ENV_VARS}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def user_jwt(secret: str, sub: str, ttl: int = 600) -> str:
    """An HS256 user token as the iOS app sends it (sub = user id, exp set)."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = _b64(json.dumps({"sub": sub, "iat": now, "exp": now + ttl}, separators=(",", ":")).encode())
    signing_input = f"{header}.{claims}".encode()
    sig = _b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return f"{header}.{claims}.{sig}"


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def hk_sample(
    kind: str,
    value: float,
    unit: str,
    at: datetime,
    sample_uuid: Optional[str] = None,
) -> dict:
    return {
        "uuid": sample_uuid or str(uuid.uuid4()).upper(),
        "type": kind,
        "value": value,
        "unit": unit,
        "start_date": rfc3339(at),
        "end_date": rfc3339(at),
        "source": {"name": "Apple Watch", "bundle_id": "com.apple.health", "device_model": "Watch7,1"},
    }


def push_healthkit(gateway_url: str, jwt: str, samples: List[dict], deleted: List[str] = ()) -> dict:
    """POST /v1/healthkit/samples; returns the JSON answer, raises on non-2xx."""
    body = json.dumps({"samples": samples, "deleted": list(deleted)}).encode()
    req = urllib.request.Request(
        gateway_url.rstrip("/") + "/v1/healthkit/samples",
        data=body,
        method="POST",
        headers={"Authorization": "Bearer " + jwt, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise AssertionError(f"HealthKit push: HTTP {e.code}: {e.read()[:500]!r}") from e


def eventually(fn, timeout: float = 20.0, interval: float = 0.2):
    """Calls fn until it returns a truthy value or timeout passes; returns the
    last value (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(interval)

"""Redaction of agent state before it is logged, traced or checkpointed.

Agent state is PHI: it names users and carries their biometric values. The
bridge's own logs never hold either (DESIGN §2.7), and an agent's logs and
checkpoints should not either. ``redact()`` returns a copy of a nested
structure with:

- user ids (values under user-id keys, e.g. "user_id", and every later
  occurrence of those ids inside any string) replaced by the same keyed
  pseudonym the Go services log: "u_" + the first 16 hex characters of
  HMAC-SHA256(key, id). With the services' LOG_PSEUDONYM_KEY as key, an
  agent log line and a bridge log line about the same user match;
- biometric values (numbers under value keys such as "value" or a catalog
  metric name like "hrv_rmssd_ms", anywhere below them) replaced by
  "[redacted]";
- values written into text ("HRV 52 ms", "resting HR 51 bpm", "sleep
  7h12m", as biometrics_summary() produces) masked inside strings.

Dataclasses (LatestValue, Reading...), protobuf messages and objects with
pydantic's model_dump() (LangChain messages) are converted to dicts first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from typing import Any, Iterable, Optional, Set, Union

REDACTED = "[redacted]"

USER_KEYS = frozenset({"user_id", "userid", "user", "subject", "subject_user", "sub", "patient_id"})

# The metric catalog (pkg/catalog) plus generic names for a reading's value.
METRIC_NAMES = frozenset(
    """heart_rate_bpm resting_heart_rate_bpm hrv_rmssd_ms hrv_sdnn_ms respiratory_rate_brpm
    spo2_pct skin_temp_c body_temp_c temperature_deviation_c recovery_score readiness_score
    sleep_score sleep_duration_s sleep_efficiency_pct deep_sleep_s rem_sleep_s light_sleep_s
    awake_s strain active_energy_kcal steps distance_m vo2max_ml_kg_min
    blood_pressure_systolic_mmhg blood_pressure_diastolic_mmhg sleep_stage""".split()
)
VALUE_KEYS = frozenset({"value", "values", "biometrics", "latest", "min_value", "max_value", "avg_value"}) | METRIC_NAMES

# "<number> <unit>" for the units the catalog and biometrics_summary() use,
# "<number>/100" and "/21" scores, "7h12m" durations, and "stage REM".
_UNITS = r"bpm|brpm|ms|%|°C|degC|kcal|steps|km|m|ml/kg/min|mmHg|/100|/21|score"
_TEXT_VALUE_RE = re.compile(
    r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*\s?(?:" + _UNITS + r")(?![\w/])"
    r"|\b\d+h\d{1,2}m\b"
    r"|\bstage (?:in bed|asleep|awake|light|core|deep|REM|\d)\b",
)


def _key_bytes(key: Union[bytes, str]) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not key:
        raise ValueError("pseudonym key is empty")
    return key


def pseudonym(user_id: str, key: Union[bytes, str]) -> str:
    """The keyed pseudonym of a user id, identical to the Go services'
    logging.Pseudonymizer with the same key (LOG_PSEUDONYM_KEY)."""
    return "u_" + hmac.new(_key_bytes(key), user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class Redactor:
    """Reusable redact(): holds the key and the key sets.

    key=None picks a random key for this Redactor, so pseudonyms are stable
    only within it (as in the Go services when LOG_PSEUDONYM_KEY is unset).
    """

    def __init__(
        self,
        key: Union[bytes, str, None] = None,
        *,
        user_keys: Iterable[str] = USER_KEYS,
        value_keys: Iterable[str] = VALUE_KEYS,
        user_ids: Iterable[str] = (),
        mask_text: bool = True,
    ) -> None:
        self._key = secrets.token_bytes(32) if key is None else _key_bytes(key)
        self._user_keys = frozenset(k.lower() for k in user_keys)
        self._value_keys = frozenset(k.lower() for k in value_keys)
        self._user_ids = frozenset(u for u in user_ids if u)
        self._mask_text = mask_text

    def pseudonym(self, user_id: str) -> str:
        return pseudonym(user_id, self._key)

    def __call__(self, obj: Any) -> Any:
        return self.redact(obj)

    def redact(self, obj: Any) -> Any:
        plain = _plain(obj)
        ids: Set[str] = set(self._user_ids)
        self._collect(plain, ids)
        # Longest first, so an id that contains another is replaced whole.
        ordered = sorted(ids, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(i) for i in ordered)) if ordered else None
        return self._walk(plain, pattern, masked=False)

    def _collect(self, obj: Any, ids: Set[str]) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(k, str) and k.lower() in self._user_keys and isinstance(v, str) and v:
                    ids.add(v)
                else:
                    self._collect(v, ids)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for v in obj:
                self._collect(v, ids)

    def _text(self, s: str, pattern: Optional["re.Pattern[str]"]) -> str:
        if pattern is not None:
            s = pattern.sub(lambda m: self.pseudonym(m.group(0)), s)
        if self._mask_text:
            s = _TEXT_VALUE_RE.sub(REDACTED, s)
        return s

    def _walk(self, obj: Any, pattern, masked: bool) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                lk = k.lower() if isinstance(k, str) else None
                nk = self._text(k, pattern) if isinstance(k, str) else k
                if lk in self._user_keys and isinstance(v, str):
                    out[nk] = self.pseudonym(v) if v else v
                else:
                    out[nk] = self._walk(v, pattern, masked or lk in self._value_keys)
            return out
        if isinstance(obj, (list, tuple)):
            items = [self._walk(v, pattern, masked) for v in obj]
            return items if isinstance(obj, list) else tuple(items)
        if isinstance(obj, bool) or obj is None:
            return obj
        if isinstance(obj, (int, float)):
            return REDACTED if masked else obj
        if isinstance(obj, str):
            if masked and _looks_numeric(obj):
                return REDACTED
            return self._text(obj, pattern)
        return obj


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _plain(obj: Any) -> Any:
    """Dataclasses, protobuf messages and pydantic models as dicts; the
    containers below them copied."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "DESCRIPTOR") and hasattr(obj, "ListFields"):
        from google.protobuf import json_format

        return json_format.MessageToDict(obj, preserving_proto_field_name=True)
    if hasattr(obj, "model_dump") and callable(obj.model_dump):
        try:
            return _plain(obj.model_dump())
        except Exception:
            return repr(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_plain(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, (set, frozenset)):
        return [_plain(v) for v in sorted(obj, key=repr)]
    if hasattr(obj, "isoformat") or hasattr(obj, "total_seconds"):
        return str(obj)
    return obj


def redact(
    obj: Any,
    key: Union[bytes, str],
    *,
    user_ids: Iterable[str] = (),
    user_keys: Iterable[str] = USER_KEYS,
    value_keys: Iterable[str] = VALUE_KEYS,
    mask_text: bool = True,
) -> Any:
    """A redacted copy of obj (see the module doc). key is the pseudonym key
    (use the services' LOG_PSEUDONYM_KEY so pseudonyms match theirs);
    user_ids adds ids to mask wherever they appear, even without a user-id
    key nearby."""
    return Redactor(key, user_keys=user_keys, value_keys=value_keys, user_ids=user_ids, mask_text=mask_text).redact(obj)

"""A compact, agent-friendly summary of a user's current biometrics.

``biometrics_summary(client, user_id)`` is a plain function, so it works as a
LangGraph/LangChain tool or inside any node without importing LangGraph:

    >>> biometrics_summary(client, "demo-user", ["hrv_rmssd_ms", "resting_heart_rate_bpm"])
    'HRV 52 ms, 3 h old; resting HR 51 bpm, 9 h old'

The text holds biometric values: treat it as PHI (redact() masks it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

from .models import LatestValue


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 or abs(v) >= 100 else f"{v:.1f}"


def _dur(v: float) -> str:
    minutes = int(round(v / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m"


_STAGES = {0: "in bed", 1: "asleep", 2: "awake", 3: "light", 4: "deep", 5: "REM"}

# metric -> (label, formatter of the value in its canonical unit)
_FORMATS: Dict[str, Tuple[str, Callable[[float], str]]] = {
    "hrv_rmssd_ms": ("HRV", lambda v: f"{v:.0f} ms"),
    "hrv_sdnn_ms": ("HRV (SDNN)", lambda v: f"{v:.0f} ms"),
    "resting_heart_rate_bpm": ("resting HR", lambda v: f"{v:.0f} bpm"),
    "heart_rate_bpm": ("HR", lambda v: f"{v:.0f} bpm"),
    "recovery_score": ("recovery", lambda v: f"{_num(v)}/100"),
    "readiness_score": ("readiness", lambda v: f"{_num(v)}/100"),
    "sleep_score": ("sleep score", lambda v: f"{_num(v)}/100"),
    "sleep_duration_s": ("sleep", _dur),
    "sleep_efficiency_pct": ("sleep efficiency", lambda v: f"{_num(v)}%"),
    "deep_sleep_s": ("deep sleep", _dur),
    "rem_sleep_s": ("REM sleep", _dur),
    "light_sleep_s": ("light sleep", _dur),
    "awake_s": ("awake", _dur),
    "respiratory_rate_brpm": ("respiratory rate", lambda v: f"{_num(v)} brpm"),
    "spo2_pct": ("SpO2", lambda v: f"{_num(v)}%"),
    "skin_temp_c": ("skin temp", lambda v: f"{v:.1f} °C"),
    "body_temp_c": ("body temp", lambda v: f"{v:.1f} °C"),
    "temperature_deviation_c": ("temp deviation", lambda v: f"{v:+.1f} °C"),
    "strain": ("strain", lambda v: f"{v:.1f}/21"),
    "active_energy_kcal": ("active energy", lambda v: f"{v:.0f} kcal"),
    "steps": ("steps", lambda v: f"{v:.0f} steps"),
    "distance_m": ("distance", lambda v: f"{v / 1000:.1f} km" if v >= 1000 else f"{v:.0f} m"),
    "vo2max_ml_kg_min": ("VO2max", lambda v: f"{v:.1f} ml/kg/min"),
    "blood_pressure_systolic_mmhg": ("BP systolic", lambda v: f"{v:.0f} mmHg"),
    "blood_pressure_diastolic_mmhg": ("BP diastolic", lambda v: f"{v:.0f} mmHg"),
    "sleep_stage": ("sleep", lambda v: "stage " + _STAGES.get(int(v), str(int(v)))),
}
# What an agent most often wants first; the rest follow by name.
_ORDER = list(_FORMATS)


def format_age(age: timedelta) -> str:
    """'just now', '25 min old', '3 h old', '2 d old' (rounded down)."""
    s = max(age.total_seconds(), 0)
    if s < 60:
        return "just now"
    if s < 3600:
        return f"{int(s // 60)} min old"
    if s < 48 * 3600:
        return f"{int(s // 3600)} h old"
    return f"{int(s // 86400)} d old"


def format_value(v: LatestValue) -> str:
    """'HRV 52 ms' for one value (catalog metrics get a label and unit)."""
    label, fmt = _FORMATS.get(v.metric, (v.metric, lambda x: f"{x:g} {v.unit}".rstrip()))
    return f"{label} {fmt(v.value)}"


def format_summary(
    values: Iterable[LatestValue],
    *,
    requested: Optional[Sequence[str]] = None,
    now: Optional[datetime] = None,
) -> str:
    """Joins values as 'HRV 52 ms, 3 h old; resting HR 51 bpm, 9 h old'.

    Ages are as the server reported them, or at `now` when given. Requested
    metrics without a value are listed at the end ('no data: steps').
    """
    vals = list(values)
    rank = {m: i for i, m in enumerate(_ORDER)}
    vals.sort(key=lambda v: (rank.get(v.metric, len(rank)), v.metric))
    parts = [f"{format_value(v)}, {format_age(v.age_at(now) if now else v.age)}" for v in vals]
    have = {v.metric for v in vals}
    missing = [m for m in (requested or []) if m not in have]
    if missing:
        parts.append("no data: " + ", ".join(missing))
    if not parts:
        return "no biometrics available"
    return "; ".join(parts)


def biometrics_summary(
    client,
    user_id: str,
    metrics: Union[str, Sequence[str], None] = None,
    max_age: Union[timedelta, float, None] = None,
) -> str:
    """One line summarizing the user's latest biometrics with their freshness,
    e.g. 'HRV 52 ms, 3 h old; resting HR 51 bpm, 9 h old'.

    client is a biobridge.Client; metrics limits the summary (default: every
    metric with data); values older than max_age count as missing. Errors
    are the client's (BiobridgeError subclasses), so a tool runner can
    report them to the model.
    """
    requested = [metrics] if isinstance(metrics, str) else list(metrics or [])
    values = client.get_latest(user_id, requested or None, max_age=max_age)
    return format_summary(values, requested=requested)


async def biometrics_summary_async(
    client,
    user_id: str,
    metrics: Union[str, Sequence[str], None] = None,
    max_age: Union[timedelta, float, None] = None,
) -> str:
    """biometrics_summary for an AsyncClient."""
    requested = [metrics] if isinstance(metrics, str) else list(metrics or [])
    values = await client.get_latest(user_id, requested or None, max_age=max_age)
    return format_summary(values, requested=requested)

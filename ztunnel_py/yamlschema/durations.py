"""Durations as Istio's and Flagger's resources write them (protobuf `Duration` in YAML, Go's
`time.ParseDuration`: `15s`, `1.5s`, `100ms`, `1h30m`), parsed once for validation and
translation alike.

`DURATION` accepts any well-formed duration (a zero too: `timeout: 0s` means none);
`MS_DURATION` is Istio's `ValidateDuration`, used where a zero or a finer precision makes no
sense (connection pool and outlier detection times): at least 1 ms, in whole milliseconds.
"""

from __future__ import annotations

from ztunnel_py.config import go_duration
from ztunnel_py.yamlschema.schema import Str

__all__ = ["DURATION", "MS_DURATION", "parse_duration"]


def parse_duration(text: object) -> float | None:
    """A Go/protobuf duration (`15s`, `1.5s`, `100ms`, `1h30m`) in seconds; None if malformed."""
    return go_duration(text) if isinstance(text, str) and text else None


def _duration(text: str) -> str | None:
    if parse_duration(text) is None:
        return f"{text!r} is not a duration (e.g. 10s, 1.5s, 500ms)"
    return None


def _ms_duration(text: str) -> str | None:
    seconds = parse_duration(text)
    if seconds is None:
        return _duration(text)
    millis = seconds * 1000
    if millis < 1:
        return f"{text!r} is shorter than 1ms"
    if abs(millis - round(millis)) > 1e-6:
        return f"{text!r}: only durations to millisecond precision are supported"
    return None


DURATION = Str(checks=(_duration,))
MS_DURATION = Str(checks=(_ms_duration,))

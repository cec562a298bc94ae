"""An HTTP filter for ztunnel_py waypoints, shipped as its own package: a local rate limiter.

It shows the whole contract of a user filter:

- a class deriving from `ztunnel_py.http.filter.Filter`, built with one argument, the plugin's
  configuration mapping (a `WasmPlugin`'s `pluginConfig`), which it validates;
- an entry point in the group `ztunnel_py.http_filters` (see pyproject.toml), so a waypoint can
  load it by name;
- hooks as coroutines: here only `on_request_headers`, answering `429` with a `LocalReply` once
  the bucket is empty (Envoy's local rate limit filter: body `local_rate_limited`, response flag
  `RL`, header `x-ratelimit-limit`).

Configuration: `max_tokens` (bucket size), `tokens_per_fill` and `fill_interval` (a duration
such as `1s` or `500ms`): the bucket is refilled by `tokens_per_fill` every `fill_interval`, up to
`max_tokens`. One bucket per waypoint: the instance is shared by every request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from ztunnel_py.http.filter import Filter, LocalReply, RequestContext

__all__ = ["LocalRateLimit"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


def _positive_int(config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _duration(text: Any) -> float:
    m = _DURATION.match(str(text))
    if m is None:
        raise ValueError(f"fill_interval must be a duration like 1s or 500ms, got {text!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError("fill_interval must be positive")
    return seconds


class LocalRateLimit(Filter):
    name = "local_ratelimit"

    def __init__(self, config: Mapping[str, Any]) -> None:
        unknown = set(config) - {"max_tokens", "tokens_per_fill", "fill_interval"}
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        self.max_tokens = _positive_int(config, "max_tokens", 100)
        self.tokens_per_fill = _positive_int(config, "tokens_per_fill", self.max_tokens)
        self.fill_interval = _duration(config.get("fill_interval", "1s"))
        self._tokens = float(self.max_tokens)
        self._filled = time.monotonic()

    def _refill(self, now: float) -> None:
        fills = int((now - self._filled) / self.fill_interval)
        if fills:
            self._tokens = min(self.max_tokens, self._tokens + fills * self.tokens_per_fill)
            self._filled += fills * self.fill_interval

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        self._refill(time.monotonic())
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return LocalReply(
            429,
            "local_rate_limited",
            headers=(("x-ratelimit-limit", str(self.max_tokens)),),
            flag="RL",
            details="local_rate_limited",
        )

"""The canary controller (`ztunnel-py canary run`): the trio driver around `analysis`.

It follows every Canary the `Resources` hold: a task per Canary wakes every
`analysis.interval`, reads the object, measures its metrics on Prometheus when the step needs
them (`metrics.py`, the query in a thread), decides (`analysis.advance`), applies the new weights
as a VirtualService and DestinationRule (`routes.py`) and writes the status back into the
Canary, then prints the step (`report.step_line`). A discovery loop picks up new Canaries and
drops deleted ones every `resync` seconds. A Canary that does not validate is reported once per
spec and left alone (its routes untouched); a write that fails is reported and tried again at
the next step.

Prometheus is `spec.metricsServer` when the Canary names one, else the controller's default,
reached through `connect` (a testbed's Prometheus lives in a network namespace of its own).

With `until_done`, `run` returns once every Canary it follows has finished (Succeeded or
Failed) its current revision: 0 if all were promoted, 1 otherwise (for scripts and CI).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence

import trio

from ztunnel_py.canary import analysis, metrics, report, routes
from ztunnel_py.canary.store import CANARY_KIND, Document, Resources, StoreError
from ztunnel_py.flagger import canary as flagger
from ztunnel_py.telemetry import promql

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Say = Callable[[str], None]
DEFAULT_NAMESPACE = "default"
QUERY_TIMEOUT = 5.0
INVALID = "Invalid"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def key_of(document: Document) -> Key:
    meta = document.get("metadata") or {}
    return (str(meta.get("namespace") or DEFAULT_NAMESPACE), str(meta.get("name")))


class Controller:
    def __init__(
        self,
        resources: Resources,
        prometheus_url: str | None,
        *,
        connect: promql.Connect | None = None,
        say: Say = print,
    ) -> None:
        self._resources = resources
        self._prometheus = prometheus_url
        self._connect = connect
        self._say = say
        # the phase each followed Canary is in (for until_done), and what was said last
        self.phases: dict[Key, str] = {}
        self._said: dict[Key, str] = {}

    async def run(self, *, until_done: bool = False, resync: float = 1.0) -> int:
        running: dict[Key, trio.CancelScope] = {}
        async with trio.open_nursery() as nursery:
            while True:
                listed, documents = await self._call(self._resources.canaries)
                if not listed or not isinstance(documents, list):
                    await trio.sleep(resync)
                    continue
                keys = {key_of(d) for d in documents}
                for key in sorted(keys - running.keys()):
                    running[key] = trio.CancelScope()
                    nursery.start_soon(self._follow, key, running[key], resync)
                for key in running.keys() - keys:
                    running.pop(key).cancel()
                    self.phases.pop(key, None)
                    self._say(f"{now()} {key[0]}/{key[1]} deleted: no longer followed")
                if until_done and self._finished(keys):
                    nursery.cancel_scope.cancel()
                    break
                await trio.sleep(resync)
        return 0 if all(p == analysis.SUCCEEDED for p in self.phases.values()) else 1

    def _finished(self, keys: set[Key]) -> bool:
        return bool(keys) and all(self.phases.get(k) in (*analysis.TERMINAL, INVALID) for k in keys)

    async def _call(self, fn: Callable[..., object], *args: object) -> tuple[bool, object]:
        """A Resources call in a thread: (True, its result), or (False, None) and a line
        saying why it failed."""
        try:
            return True, await trio.to_thread.run_sync(fn, *args)
        except (StoreError, OSError) as e:
            self._say(f"{now()} cannot read or write the resources: {e}")
            return False, None

    async def _follow(self, key: Key, scope: trio.CancelScope, resync: float) -> None:
        with scope:
            while True:  # noqa: ASYNC110 (a step every interval: the interval is the point)
                await trio.sleep(await self._tick(key, resync))

    async def _tick(self, key: Key, resync: float) -> float:
        """One step of one Canary; how long until the next."""
        _, found = await self._call(self._resources.get, CANARY_KIND, *key)
        if not isinstance(found, dict):
            return resync
        who = f"{key[0]}/{key[1]}"
        problems = flagger.problems_of(found)
        if problems:
            self.phases[key] = INVALID
            self._once(key, f"{now()} {who} is not a valid Canary: " + "; ".join(problems))
            return resync
        c = flagger.read(found, DEFAULT_NAMESPACE)
        status = analysis.Status.from_dict(found.get("status"))
        checks = None
        if analysis.needs_checks(c, status):
            checks = await trio.to_thread.run_sync(metrics.measure, c, self._query(c))
        decision = analysis.advance(c, status, checks, now())
        if decision.routes is not None:
            documents = routes.documents(c, decision.routes)
            written, _ = await self._call(self._resources.apply, documents)
            if not written:
                return c.analysis.interval  # the step is taken again at the next one
        if decision.status != status:
            await self._call(self._write_status, key, decision.status)
        self.phases[key] = decision.status.phase
        if decision.status.steps and decision.status.steps is not status.steps:
            self._once(key, report.step_line(who, decision.status.steps[-1]))
        else:
            self._once(key, f"{now()} {who} {decision.event}")
        return c.analysis.interval

    def _once(self, key: Key, line: str) -> None:
        """Say `line` unless it repeats what was said last about this Canary (time aside)."""
        bare = line.split(" ", 1)[1]
        if self._said.get(key) != bare:
            self._said[key] = bare
            self._say(line)

    def _query(self, c: flagger.Canary) -> Callable[[str], Sequence[promql.Sample]]:
        url = c.metrics_server or self._prometheus

        def query(text: str) -> Sequence[promql.Sample]:
            if url is None:
                raise promql.PrometheusError(
                    "no Prometheus to ask: give the controller --prometheus-url or the Canary "
                    "spec.metricsServer"
                )
            return promql.instant_query(url, text, timeout=QUERY_TIMEOUT, connect=self._connect)

        return query

    def _write_status(self, key: Key, status: analysis.Status) -> None:
        """The status onto the Canary as it is now (a spec changed meanwhile is kept: its new
        revision restarts the analysis at the next step)."""
        current = self._resources.get(CANARY_KIND, *key)
        if current is None:
            return
        current["status"] = status.to_dict()
        self._resources.apply([current])

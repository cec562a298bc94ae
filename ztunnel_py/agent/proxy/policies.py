"""The compiled authorization policies of a workload, built in a worker thread.

`ProxyState` caches one compiled `PolicySet` per workload and drops every one on any change;
compiling one takes about 50 ms at 10,000 policies in scope. Done inline on the event loop, on
the first connection after a change, that would stall every connection and relay of the agent
for as long. `PolicyCompiler.policies_for` compiles in a worker thread instead (trio.to_thread;
the inputs are immutable `Authorization` values, so the thread reads nothing the event loop
changes) while the loop keeps serving everything else, and several connections waiting for the
same workload's set share one compile. The pod manager also calls it for every enrolled pod as
soon as the state changes, so connections usually find the set ready.

Which set judges a connection that arrives while the new set compiles: the new one. The
connection waits for it (the agent's other connections do not). That is ztunnel's semantics: its
connections evaluate policies under the state's read lock while an xDS update holds the write
lock, so a connection never sees a state older than the last applied update; fail closed. A
compile is only used if no change came in meanwhile (the state's `version`), otherwise it is
redone; under churn too fast for that, the set is compiled inline, current by construction.
"""

from __future__ import annotations

import trio

from ztunnel_py.model import Workload
from ztunnel_py.policy.rbac import PolicySet
from ztunnel_py.state.mesh import ProxyState

# Compiles in a worker thread before a connection compiles inline (the state kept changing).
ATTEMPTS = 3


class _Compile:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: PolicySet | None = None


class PolicyCompiler:
    """Compiles workloads' policy sets off the event loop, one compile per workload and state."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        # (workload uid, state version) -> the compile in progress
        self._running: dict[tuple[str, int], _Compile] = {}
        self.compiles = 0  # worker-thread compiles done, for tests and debugging

    async def policies_for(self, workload: Workload) -> PolicySet:
        """The policies guarding `workload` under the current state."""
        for _ in range(ATTEMPTS):
            cached = self.state.cached_policies(workload)
            if cached is not None:
                return cached
            key = (workload.uid, self.state.version)
            job = self._running.get(key)
            if job is None:
                job = self._running[key] = _Compile()
                inputs = self.state.policy_inputs(workload)
                try:
                    job.result = await trio.to_thread.run_sync(PolicySet, inputs)
                    self.compiles += 1
                    self.state.install_policies(workload.uid, key[1], job.result)
                finally:
                    del self._running[key]
                    job.done.set()
            else:
                await job.done.wait()
            if job.result is not None and self.state.version == key[1]:
                return job.result
        return self.state.policies_for(workload)

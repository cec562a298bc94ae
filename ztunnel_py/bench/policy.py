"""`ztunnel-py bench policy`: L4 authorization at scale, control plane and agent, in-process.

N `security.istio.io/v1` AuthorizationPolicies (a mix of ALLOW / DENY / dry-run, mesh-wide in
the root namespace, namespace-wide and selector-scoped, with principals, namespaces, ipBlocks,
ports, notPorts and L4 `when` conditions) all guard one destination workload: they are in its
namespace or in the root namespace, and the selector-scoped ones select it. Its Namespace (ambient
label) and Pod come with them. One source per object, as the Kubernetes source hands them in.

Reported:

- control plane: the `ConfigStore.apply` of everything (validation, conflict resolution and
  translation), translation alone, and the `apply` of one policy changed at that scale;
- agent: compiling the workload's `PolicySet` (once per change, in a worker thread, so the
  event loop keeps serving: `agent/proxy/policies.py`), then `ProxyState.policies_for(workload)`
  and `PolicySet.evaluate` per inbound connection, for connection shapes with known outcomes
  (checked, so a figure never describes the wrong path): mTLS allowed, mTLS denied by a DENY,
  plaintext (allowed by ipBlocks), and mTLS that no policy matches (denied). The allowing and
  denying policies sort last, so a decision that went through the policies in order would look
  at every one of them.

Timing loops are bounded by count (2,000) and by time (`--budget` seconds, at least 5 runs).
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ztunnel_py.controlplane.resources import Document, Origin
from ztunnel_py.controlplane.sources.yamldocs import Parsed
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.controlplane.translate import MeshOptions, translate
from ztunnel_py.model import Action, Identity, Workload
from ztunnel_py.policy.rbac import Connection, Decision, PolicySet
from ztunnel_py.state.mesh import ProxyState

NAMESPACE = "bench"
POD = "server"
POD_IP = "10.10.0.10"
PORT = 8080
MIN_POLICIES = 10
# Per timed operation: stop at whichever bound comes first.
MAX_ITERATIONS = 2_000
CHANGES = 5


@dataclass
class Timing:
    iterations: int
    median_us: float
    p99_us: float


@dataclass
class PolicyBenchResult:
    policies: int
    in_scope: int
    allow: int
    deny: int
    dry_run: int
    first_load_seconds: float
    translate_seconds: float
    one_change_median_seconds: float
    one_change_seconds: list[float]
    compile: Timing
    policies_for: Timing
    decisions: dict[str, Timing]


# --- the synthetic configuration ---------------------------------------------------------------


def _meta(name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, **extra}


def _namespace() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"istio.io/dataplane-mode": "ambient"}},
    }


def _pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(POD, NAMESPACE, labels={"app": POD, "version": "v1"}),
        "spec": {"serviceAccountName": POD, "nodeName": "bench-node"},
        "status": {"phase": "Running", "podIP": POD_IP},
    }


def _block(i: int) -> str:
    """A /24 in 172.16.0.0/12, far from every benchmark connection's source."""
    return str(ipaddress.IPv4Network((0xAC100000 + (i % 4096) * 256, 24)))


def _port(i: int) -> str:
    """Ports 9000-9999: never the connections' port 8080."""
    return str(9000 + i % 1000)


def _rule(i: int, variant: int, deny: bool) -> dict[str, Any]:
    """One rule. Every DENY rule has a `from` clause no benchmark connection satisfies, and
    every ALLOW rule fails for them too, so only the dedicated policies decide."""
    source: dict[str, Any]
    shape = variant % 5
    if shape == 0:
        source = {"principals": [f"cluster.local/ns/client-{i % 97}/sa/sa-{i}"]}
    elif shape == 1:
        source = {"namespaces": [f"client-{i % 97}", f"team-{i % 13}-*"]}
    elif shape == 2:
        source = {"ipBlocks": [_block(i), _block(i + 1)], "notIpBlocks": [_block(i + 2)]}
    elif shape == 3:
        source = {"principals": [f"*/sa/robot-{i % 31}"], "notNamespaces": ["kube-system"]}
    else:
        source = {"namespaces": [f"client-{i % 97}"], "ipBlocks": [_block(i)]}
    rule: dict[str, Any] = {"from": [{"source": source}]}
    if variant % 3 == 0:
        rule["to"] = [{"operation": {"ports": [_port(i), _port(i + 1)]}}]
    elif variant % 3 == 1:
        rule["to"] = [{"operation": {"notPorts": [_port(i)]}}]
    if variant % 4 == 0:
        rule["when"] = [{"key": "source.ip", "values": [_block(i + 3)]}]
    elif variant % 4 == 1 and not deny:
        rule["when"] = [{"key": "destination.port", "values": [_port(i + 2)]}]
    return rule


def _generated(i: int) -> dict[str, Any]:
    deny = i % 4 == 0
    spec: dict[str, Any] = {
        "action": "DENY" if deny else "ALLOW",
        "rules": [_rule(i, i + r, deny) for r in range(1 + i % 3)],
    }
    annotations = {"istio.io/dry-run": "true"} if i % 100 == 7 else {}
    root = i % 20 == 0
    if not root and i % 2 == 1:
        spec["selector"] = {"matchLabels": {"app": POD} if i % 4 == 1 else {"version": "v1"}}
    elif root and i % 40 == 20:
        # Selector policies in the root namespace apply to matching workloads everywhere.
        spec["selector"] = {"matchLabels": {"app": POD}}
    namespace = "istio-system" if root else NAMESPACE
    metadata = _meta(f"policy-{i:05d}", namespace, annotations=annotations)
    return _policy(metadata, spec)


def _policy(metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": spec,
    }


# The policies that decide the benchmark connections, named to sort after the generated ones.
_DECIDING = [
    _policy(
        _meta("zz-allow-frontend", NAMESPACE),
        {
            "selector": {"matchLabels": {"app": POD}},
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/frontend/sa/web"]}}],
                    "to": [{"operation": {"ports": [str(PORT)]}}],
                }
            ],
        },
    ),
    _policy(
        _meta("zz-allow-legacy", NAMESPACE),
        {
            "selector": {"matchLabels": {"app": POD}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"ipBlocks": ["192.168.1.0/24"]}}]}],
        },
    ),
    _policy(
        _meta("zz-deny-blocked", NAMESPACE),
        {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["blocked"]}}]}]},
    ),
]


def build_resources(policies: int) -> dict[str, dict[str, Any]]:
    """The Namespace, the Pod and `policies` AuthorizationPolicies, by Kubernetes source name."""
    if policies < MIN_POLICIES:
        raise ValueError(f"--policies must be at least {MIN_POLICIES}")
    objects = [_namespace(), _pod()]
    objects += [_generated(i) for i in range(policies - len(_DECIDING))]
    objects += _DECIDING
    out = {}
    for obj in objects:
        meta = obj["metadata"]
        scope = f"{meta['namespace']}/" if "namespace" in meta else ""
        out[f"kube:{obj['kind']}/{scope}{meta['name']}"] = obj
    return out


def _parsed(source: str, body: dict[str, Any]) -> Parsed:
    # What the Kubernetes source hands the store: one API object, already schema-checked.
    return Parsed((Document(Origin(source), body, strict=False),))


# --- timing ------------------------------------------------------------------------------------


def _time(operation: Callable[[], object], budget: float) -> Timing:
    samples: list[int] = []
    deadline = time.perf_counter() + budget
    while len(samples) < MAX_ITERATIONS and (len(samples) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        operation()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    p99 = samples[min(len(samples) - 1, (len(samples) * 99) // 100)]
    return Timing(len(samples), statistics.median(samples) / 1000, p99 / 1000)


def _connections() -> dict[str, tuple[Connection, bool, str | None]]:
    """Shape -> (connection, expected verdict, expected deciding policy key)."""
    dst = ipaddress.ip_address(POD_IP)
    td = "cluster.local"
    return {
        "mtls allowed": (
            Connection(
                ipaddress.ip_address("10.20.0.5"), Identity(td, "frontend", "web"), dst, PORT
            ),
            True,
            f"{NAMESPACE}/zz-allow-frontend",
        ),
        "mtls denied by DENY": (
            Connection(
                ipaddress.ip_address("10.20.0.6"), Identity(td, "blocked", "app"), dst, PORT
            ),
            False,
            f"{NAMESPACE}/zz-deny-blocked",
        ),
        "plaintext, no identity": (
            Connection(ipaddress.ip_address("192.168.1.7"), None, dst, PORT),
            True,
            f"{NAMESPACE}/zz-allow-legacy",
        ),
        "mtls, no policy matches": (
            Connection(
                ipaddress.ip_address("192.168.50.5"), Identity(td, "stranger", "nobody"), dst, PORT
            ),
            False,
            None,
        ),
    }


def _decide(policies: PolicySet, conn: Connection) -> Callable[[], Decision]:
    return lambda: policies.evaluate(conn)


def _check(shape: str, decision: Decision, allowed: bool, key: str | None) -> None:
    if (decision.allowed, decision.policy_key) != (allowed, key):
        raise RuntimeError(
            f"connection {shape!r}: expected allowed={allowed} by {key}, got "
            f"allowed={decision.allowed} by {decision.policy_key} ({decision.reason})"
        )


# --- the benchmark -----------------------------------------------------------------------------


def run_bench(policies: int, budget: float, say: Callable[[str], None]) -> PolicyBenchResult:
    """`budget`: seconds spent timing each per-connection operation (at least 5 runs each)."""
    options = MeshOptions()
    say(f"generating {policies:,} AuthorizationPolicies, their Namespace and Pod")
    resources = build_resources(policies)
    changes = {source: _parsed(source, body) for source, body in resources.items()}

    store = ConfigStore(options, report=False)
    start = time.perf_counter()
    store.apply(changes)
    first_load = time.perf_counter() - start
    errors = [str(d) for d in store.diagnostics() if d.is_error]
    if errors:
        raise RuntimeError(f"{len(errors)} invalid generated resources, first: {errors[0]}")
    snapshot = store.current()
    if len(snapshot.policies) != policies:
        raise RuntimeError(f"translated {len(snapshot.policies)} policies, expected {policies}")
    say(f"control plane: first load (validate + translate) {first_load:.2f} s")

    accepted = list(store.resources().values())
    start = time.perf_counter()
    translate(accepted, options)
    translation = time.perf_counter() - start
    say(f"control plane: translation alone {translation:.2f} s")

    source = f"kube:AuthorizationPolicy/{NAMESPACE}/policy-00001"
    body = resources[source]
    one_change: list[float] = []
    for n in range(CHANGES):
        rule = {
            "from": [{"source": {"principals": [f"cluster.local/ns/change/sa/n{n}"]}}],
            "to": [{"operation": {"ports": [str(10_000 + n)]}}],
        }
        changed = {**body, "spec": {**body["spec"], "rules": [rule]}}
        start = time.perf_counter()
        result = store.apply({source: _parsed(source, changed)})
        one_change.append(time.perf_counter() - start)
        if not result.changed:
            raise RuntimeError("a policy change did not change the mesh")
        say(f"control plane: one policy change {n + 1}/{CHANGES} {one_change[-1]:.3f} s")

    state = ProxyState()
    snapshot = store.current()
    state.replace(
        snapshot.workloads.values(), snapshot.services.values(), snapshot.policies.values()
    )
    workload = _the_workload(snapshot.workloads.values())
    guarding = state.policies_for(workload)
    if len(guarding) != policies:
        raise RuntimeError(f"{len(guarding)} of {policies} policies guard the workload")
    compile_set = _time(lambda: PolicySet(guarding), min(budget, 1.0))
    say(f"agent: compile the workload's policies median {compile_set.median_us / 1000:,.1f} ms")
    lookup = _time(lambda: state.policies_for(workload), budget)
    say(f"agent: policies_for(workload) median {lookup.median_us:.1f} µs ({lookup.iterations})")

    decisions: dict[str, Timing] = {}
    for shape, (conn, allowed, key) in _connections().items():
        _check(shape, guarding.evaluate(conn), allowed, key)
        decisions[shape] = _time(_decide(guarding, conn), budget)
        d = decisions[shape]
        say(f"agent: decision '{shape}' median {d.median_us:,.1f} µs ({d.iterations})")

    kinds = _count(guarding)
    return PolicyBenchResult(
        policies=policies,
        in_scope=len(guarding),
        allow=kinds["allow"],
        deny=kinds["deny"],
        dry_run=kinds["dry_run"],
        first_load_seconds=first_load,
        translate_seconds=translation,
        one_change_median_seconds=statistics.median(one_change),
        one_change_seconds=one_change,
        compile=compile_set,
        policies_for=lookup,
        decisions=decisions,
    )


def _the_workload(workloads: Any) -> Workload:
    for w in workloads:
        if (w.namespace, w.name) == (NAMESPACE, POD):
            found: Workload = w
            return found
    raise RuntimeError(f"the Pod {NAMESPACE}/{POD} was not translated to a workload")


def _count(policies: PolicySet) -> dict[str, int]:
    dry = sum(p.dry_run for p in policies)
    deny = sum(not p.dry_run and p.action is Action.DENY for p in policies)
    return {"dry_run": dry, "deny": deny, "allow": len(policies) - dry - deny}


def main(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        result = run_bench(args.policies, args.budget, say)
    except (RuntimeError, ValueError) as e:
        print(f"bench policy: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    print(
        f"\nL4 authorization, {result.policies:,} AuthorizationPolicies guarding one workload "
        f"({result.allow:,} ALLOW, {result.deny:,} DENY, {result.dry_run} dry-run)"
    )
    print("  control plane")
    print(f"    first load (validate + translate)  {result.first_load_seconds:9.3f} s")
    print(f"    translation alone                  {result.translate_seconds:9.3f} s")
    print(
        f"    one policy change, median          {result.one_change_median_seconds:9.3f} s"
        f"   (all: {', '.join(f'{x:.3f}' for x in result.one_change_seconds)})"
    )
    print(f"  agent{'median µs':>56}{'p99 µs':>11}{'iterations':>13}")
    rows = [("compile (once per policy change)", result.compile)]
    rows += [("per connection: policies_for(workload)", result.policies_for)]
    rows += [(f"per connection: evaluate {shape}", t) for shape, t in result.decisions.items()]
    for label, t in rows:
        print(f"    {label:<48} {t.median_us:10,.1f} {t.p99_us:10,.1f} {t.iterations:12,}")
    return 0

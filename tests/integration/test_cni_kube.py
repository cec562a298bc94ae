"""The CNI plugin in `kubeconfig` mode, with the official client against an API server stand-in
on 127.0.0.1 and the real enrollment server: after enrolling a pod it annotates it
`ambient.istio.io/redirection: enabled` (the control plane sends a pod as HBONE only then), and
clears the annotation on DEL, as Istio's CNI agent does."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio

from ztunnel_py.agent.enroll import serve_enrollment
from ztunnel_py.cni.plugin import run
from ztunnel_py.protocol.zds import PodInfo

NAMESPACE_PATH = "/api/v1/namespaces/apps"
POD_PATH = "/api/v1/namespaces/apps/pods/web-1"


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.patches: list[tuple[str, str, dict[str, object]]] = []
        self.patch_status = 200


class Handler(BaseHTTPRequestHandler):
    server: ApiServer

    def log_message(self, format: str, *args: object) -> None:
        return

    def _json(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith(POD_PATH):
            self._json(200, POD)
        elif self.path.startswith(NAMESPACE_PATH):
            self._json(200, NAMESPACE)
        else:
            self._json(404, {"kind": "Status", "code": 404})

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.patches.append((self.path.split("?")[0], self.headers["Content-Type"], body))
        if self.server.patch_status != 200:
            self._json(self.server.patch_status, {"kind": "Status", "message": "etcd is down"})
            return
        self._json(200, POD)


NAMESPACE: dict[str, object] = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": "apps", "labels": {"istio.io/dataplane-mode": "ambient"}},
}
POD: dict[str, object] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-1", "namespace": "apps", "labels": {"app": "web"}},
    "spec": {"serviceAccountName": "web", "containers": []},
}


@pytest.fixture
def api() -> Iterator[ApiServer]:
    server = ApiServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Pods:
    def __init__(self) -> None:
        self.enrolled: set[str] = set()

    async def add_pod(self, info: PodInfo, netns_fd: int) -> None:
        self.enrolled.add(info.uid)

    async def del_pod(self, uid: str) -> None:
        self.enrolled.discard(uid)

    async def snapshot_sent(self, named: frozenset[str]) -> None:
        return


def kubeconfig(tmp_path: Path, port: int) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def invoke(command: str, socket_path: str, config_path: str) -> tuple[str, int]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-1",
    }
    config = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ztunnel-py-cni",
        "enrollSocket": socket_path,
        "kubeconfig": config_path,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24"}]},
    }
    return run(env, json.dumps(config).encode())


async def test_add_annotates_the_enrolled_pod_and_del_clears_it(
    tmp_path: Path, api: ApiServer
) -> None:
    socket_path = str(tmp_path / "ztunnel.sock")
    config = kubeconfig(tmp_path, api.server_address[1])
    pods = Pods()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_enrollment, socket_path, pods)
        out, code = await trio.to_thread.run_sync(invoke, "ADD", socket_path, config)
        assert code == 0, out
        assert pods.enrolled == {"Kubernetes//Pod/apps/web-1"}
        assert api.patches == [
            (
                POD_PATH,
                "application/strategic-merge-patch+json",
                {"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}},
            )
        ]
        out, code = await trio.to_thread.run_sync(invoke, "DEL", socket_path, config)
        assert code == 0, out
        assert pods.enrolled == set()
        assert api.patches[1][2] == {
            "metadata": {"annotations": {"ambient.istio.io/redirection": None}}
        }
        # An ADD whose annotation the API server refuses fails: the pod would otherwise run
        # captured while the control plane keeps sending it as plain TCP.
        api.patch_status = 500
        out, code = await trio.to_thread.run_sync(invoke, "ADD", socket_path, config)
        assert code == 1
        error = json.loads(out)
        assert error["code"] == 101
        assert error["msg"] == (
            "cannot annotate pod apps/web-1 (ambient.istio.io/redirection) in the Kubernetes API"
        )
        # DEL still succeeds when the annotation cannot be cleared: a pod being deleted must
        # not wait for the API server.
        out, code = await trio.to_thread.run_sync(invoke, "DEL", socket_path, config)
        assert code == 0, out
        nursery.cancel_scope.cancel()

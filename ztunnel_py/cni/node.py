"""`ztunnel-py cni-node`: the CNI node pod's process (a DaemonSet, one per node).

It owns three things on its node:

1. the plugin socket (`--socket`), where the host shim forwards every CNI request; each is
   carried out by the plugin itself (`plugin.run`) in a thread of this process, with the pod's
   network namespace as the descriptor the shim passed (`/proc/self/fd/N` stands in for
   CNI_NETNS); at most `MAX_REQUESTS` run at once;
2. the host shim in the CNI bin directory (`--cni-bin-dir`, the node's /opt/cni/bin), copied
   there atomically (written beside, then renamed), so a runtime never executes half a file;
3. our entry in the node's CNI configuration (`--cni-conf-dir`, the node's /etc/cni/net.d),
   appended to the primary plugin's list (`install.py`). Until the primary plugin has written
   its configuration there is nothing to chain into: we wait. The configuration is checked
   again every `--recheck` seconds and our entry restored if the primary plugin rewrote it.

The socket serves before the entry is written, so the first forwarded request finds it; on
SIGTERM or SIGINT the entry is removed first, then the shim, then the socket: a runtime that
still reads the old configuration gets the shim's own answers (`shim/ztunnel-py-cni.c`).

Pod facts come from the API server when the pod runs in a cluster: the plugin entry names a
kubeconfig written here that reads this pod's rotating service-account token from its file.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ztunnel_py.cni import install
from ztunnel_py.cni.forward import MAX_REQUEST, ForwardError, decode_request, encode_response
from ztunnel_py.cni.plugin import run as run_plugin
from ztunnel_py.cni.spec import DEFAULT_ENROLL_SOCKET
from ztunnel_py.telemetry.logs import LevelSpecError, setup_logging

log = logging.getLogger("ztunnel_py.cni.node")

DEFAULT_SOCKET = "/var/run/ztunnel-py/cni/plugin.sock"
DEFAULT_SHIM = "/opt/ztunnel-py/cni/ztunnel-py-cni"
DEFAULT_EXCLUDED = ("kube-system", "istio-system")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_REQUESTS = 16
READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    socket: Path
    cni_bin_dir: Path
    cni_conf_dir: Path
    shim: Path
    enroll_socket: str = DEFAULT_ENROLL_SOCKET
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED
    kubeconfig: str | None = None
    # more keys for our entry (the testbed's static namespaceLabels and pods)
    extra: Mapping[str, Any] = field(default_factory=dict)
    recheck: float = 2.0

    def entry(self) -> dict[str, Any]:
        """Our plugin's entry in the configuration list."""
        entry: dict[str, Any] = {
            **self.extra,
            "type": install.PLUGIN_TYPE,
            "cniNodeSocket": str(self.socket),
            "enrollSocket": self.enroll_socket,
            "excludeNamespaces": list(self.exclude_namespaces),
        }
        if self.kubeconfig is not None:
            entry["kubeconfig"] = self.kubeconfig
        return entry


# --- installing -------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def install_shim(config: NodeConfig) -> bool:
    """Copy the shim into the bin directory unless the same bytes are there; True if copied."""
    data = config.shim.read_bytes()
    target = config.cni_bin_dir / install.PLUGIN_TYPE
    with contextlib.suppress(OSError):
        if target.read_bytes() == data:
            return False
    config.cni_bin_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, data, 0o755)
    return True


def chain_config(config: NodeConfig) -> str | None:
    """Make sure our entry is in the primary configuration; the file name, or None if there is
    no configuration to chain into yet. `install.InstallError` for one we cannot read."""
    names = os.listdir(config.cni_conf_dir) if config.cni_conf_dir.is_dir() else []
    primary = install.primary_config(names)
    if primary is None:
        return None
    text = (config.cni_conf_dir / primary).read_text()
    if install.chained_entry(primary, text) == config.entry():
        return primary
    change = install.chain(primary, text, config.entry())
    _write_atomically(config.cni_conf_dir / change.write, change.text.encode(), 0o644)
    if change.remove is not None:
        (config.cni_conf_dir / change.remove).unlink(missing_ok=True)
    log.info("chained %s into %s", install.PLUGIN_TYPE, config.cni_conf_dir / change.write)
    return change.write


def uninstall(config: NodeConfig) -> None:
    """Remove our entry from every configuration file, then the shim."""
    names = os.listdir(config.cni_conf_dir) if config.cni_conf_dir.is_dir() else []
    for name in sorted(n for n in names if n.endswith(install.CONFIG_SUFFIXES)):
        path = config.cni_conf_dir / name
        try:
            change = install.unchain(name, path.read_text())
        except (OSError, install.InstallError) as e:
            log.warning("leaving %s alone: %s", path, e)
            continue
        if change is not None:
            _write_atomically(path, change.text.encode(), 0o644)
            log.info("removed %s from %s", install.PLUGIN_TYPE, path)
    (config.cni_bin_dir / install.PLUGIN_TYPE).unlink(missing_ok=True)
    log.info("removed %s", config.cni_bin_dir / install.PLUGIN_TYPE)


def write_incluster_kubeconfig(path: Path, host: str, port: str) -> None:
    """A kubeconfig for this pod's service account: the token is read from its file on every
    load, so rotation needs nothing from us."""
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server,
                    "certificate-authority": str(SERVICE_ACCOUNT_DIR / "ca.crt"),
                },
            }
        ],
        "users": [
            {"name": "ztunnel-py-cni", "user": {"tokenFile": str(SERVICE_ACCOUNT_DIR / "token")}}
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "ztunnel-py-cni"}}],
        "current-context": "local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(kubeconfig, indent=2).encode(), 0o600)


# --- serving the shim -------------------------------------------------------------------------


def _receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    """Everything the shim sent (it shuts its side down when done) and the descriptors."""
    chunks: list[bytes] = []
    fds: list[int] = []
    size = 0
    while True:
        data, ancdata, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 4))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                ints = array.array("i")
                ints.frombytes(payload[: len(payload) - len(payload) % ints.itemsize])
                fds.extend(ints)
        if not data:
            return b"".join(chunks), fds
        size += len(data)
        if size > MAX_REQUEST:
            raise ForwardError(f"request over {MAX_REQUEST} bytes")
        chunks.append(data)


def handle(conn: socket.socket) -> None:
    """One forwarded request: run the plugin, send back its output and exit status."""
    fds: list[int] = []
    try:
        conn.settimeout(READ_TIMEOUT)
        try:
            data, fds = _receive(conn)
            request = decode_request(data)
        except (OSError, ForwardError) as e:
            log.warning("dropping a request from the shim: %s", e)
            return
        env = dict(request.env)
        if fds and env.get("CNI_NETNS"):
            # The shim opened the namespace on the host; this path reaches the same one here.
            env["CNI_NETNS"] = f"/proc/self/fd/{fds[0]}"
        out, status = run_plugin(env, request.stdin)
        summary = out if status else ""
        log.info(
            "%s %s: exit %d %s",
            request.env.get("CNI_COMMAND", "?"),
            request.env.get("CNI_ARGS", ""),
            status,
            summary,
        )
        with contextlib.suppress(OSError):
            conn.sendall(encode_response(status, (out + "\n").encode() if out else b"", b""))
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


class PluginServer:
    """The Unix socket the shim forwards to, served by a thread per request."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left by a previous pod on this node
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(str(path))
        os.chmod(path, 0o600)
        self._sock.listen(64)
        self._slots = threading.BoundedSemaphore(MAX_REQUESTS)
        self._thread = threading.Thread(target=self._accept, name="cni-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            self._slots.acquire()
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            handle(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self.path.unlink(missing_ok=True)
        self._thread.join(5)


# --- the process ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cni-bin-dir",
        default="/host/opt/cni/bin",
        metavar="DIR",
        help="the node's CNI bin directory as mounted here (default: %(default)s)",
    )
    parser.add_argument(
        "--cni-conf-dir",
        default="/host/etc/cni/net.d",
        metavar="DIR",
        help="the node's CNI configuration directory as mounted here (default: %(default)s)",
    )
    parser.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        metavar="PATH",
        help="the socket the host shim forwards to; a host path mounted at the same path here "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--shim",
        default=DEFAULT_SHIM,
        metavar="FILE",
        help="the host shim executable to install (default: the image's, %(default)s)",
    )
    parser.add_argument(
        "--enroll-socket",
        default=DEFAULT_ENROLL_SOCKET,
        metavar="PATH",
        help="the node agent's enrollment socket (default: %(default)s)",
    )
    parser.add_argument(
        "--exclude-namespaces",
        default=",".join(DEFAULT_EXCLUDED),
        metavar="NS,NS",
        help="namespaces whose pods are never enrolled, and start even while this pod is down "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="read pod and namespace labels with this kubeconfig (default in a pod: its "
        "service account)",
    )
    parser.add_argument(
        "--plugin-config",
        metavar="JSON",
        help="more keys for the plugin's entry, e.g. static namespaceLabels and pods",
    )
    parser.add_argument(
        "--recheck",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often the configuration is checked and our entry restored (default: 2)",
    )
    parser.add_argument(
        "--uninstall",
        action="store_true",
        help="remove the entry and the shim, then exit",
    )
    parser.add_argument("--log-level", default="info", metavar="LEVELS", help="default: info")


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    extra: dict[str, Any] = {}
    if args.plugin_config:
        try:
            value = json.loads(args.plugin_config)
        except ValueError as e:
            raise ValueError(f"--plugin-config is not JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError("--plugin-config must be a JSON object")
        extra = value
    socket_path = Path(args.socket)
    kubeconfig: str | None = args.kubeconfig or None
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if kubeconfig is None and host and (SERVICE_ACCOUNT_DIR / "token").exists():
        path = socket_path.parent / "kubeconfig"
        write_incluster_kubeconfig(path, host, os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
        kubeconfig = str(path)
    return NodeConfig(
        socket=socket_path,
        cni_bin_dir=Path(args.cni_bin_dir),
        cni_conf_dir=Path(args.cni_conf_dir),
        shim=Path(args.shim),
        enroll_socket=args.enroll_socket,
        exclude_namespaces=tuple(n for n in args.exclude_namespaces.split(",") if n),
        kubeconfig=kubeconfig,
        extra=extra,
        recheck=args.recheck,
    )


def main(args: argparse.Namespace) -> int:
    try:
        setup_logging(args.log_level)
        config = config_from_args(args)
    except (ValueError, LevelSpecError, OSError) as e:
        print(f"ztunnel-py cni-node: {e}", file=sys.stderr)
        return 2
    if args.uninstall:
        uninstall(config)
        return 0
    if not config.shim.is_file():
        print(f"ztunnel-py cni-node: the shim {config.shim} does not exist", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: uninstalling", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = PluginServer(config.socket)
    except OSError as e:
        log.error("cannot serve %s: %s", config.socket, e)
        return 1
    server.start()
    log.info("serving the CNI shim on %s", config.socket)
    status = 0
    waiting_logged = False
    try:
        while not stop.is_set():
            try:
                if install_shim(config):
                    log.info("installed %s", config.cni_bin_dir / install.PLUGIN_TYPE)
                if chain_config(config) is None and not waiting_logged:
                    log.info(
                        "waiting for the primary CNI plugin's configuration in %s",
                        config.cni_conf_dir,
                    )
                    waiting_logged = True
            except (OSError, install.InstallError) as e:
                log.error("cannot install the plugin: %s; retrying", e)
            stop.wait(config.recheck)
    finally:
        try:
            uninstall(config)
        except OSError as e:
            log.error("uninstall failed: %s", e)
            status = 1
        server.close()
    log.info("stopped")
    return status

"""Arguments of `ztunnel-py agent` and `ztunnel-py sidecar` beyond the shared proxy flags
(`runtime.args`); every flag also reads ztunnel's (or istio-proxy's) environment variable."""

from __future__ import annotations

import argparse

from ztunnel_py.runtime.args import NO_POD_CAPTURE, add_proxy_arguments, env


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    add_proxy_arguments(parser)
    parser.add_argument(
        "--pod-name",
        default=env("POD_NAME"),
        help="this agent's pod name, for its xDS node id (env POD_NAME; default ztunnel-NODE)",
    )
    parser.add_argument(
        "--pod-namespace",
        default=env("POD_NAMESPACE", "istio-system"),
        help="this agent's namespace, for its xDS node id (env POD_NAMESPACE)",
    )
    parser.add_argument(
        "--enroll-socket",
        default=env("INPOD_UDS", "/var/run/ztunnel/ztunnel.sock"),
        metavar="PATH",
        help="Unix SOCK_SEQPACKET socket on which pods are enrolled (env INPOD_UDS)",
    )
    parser.add_argument(
        "--state-dir",
        default=env("ZTUNNEL_STATE_DIR", "/var/run/ztunnel"),
        metavar="DIR",
        help="where enrollment state is persisted for restarts",
    )
    parser.add_argument(
        "--no-capture",
        action="store_true",
        default=env("ZTUNNEL_CAPTURE", "true").lower() == "false",
        help="do not load the BPF capture programs: pods reach the mesh only through SOCKS5 "
        "(env ZTUNNEL_CAPTURE=false)",
    )
    parser.add_argument(
        "--dns-capture",
        action=argparse.BooleanOptionalAction,
        default=env("ISTIO_META_DNS_CAPTURE", "true").lower() == "true",
        help="answer every enrolled pod's DNS (UDP and TCP to port 53, captured) with the DNS "
        "proxy on 15053, as ambient's dnsCapture does (env ISTIO_META_DNS_CAPTURE; default on)",
    )
    parser.add_argument(
        "--mesh-config",
        default=env("MESH_CONFIG_FILE", "/etc/istio/config/mesh"),
        metavar="FILE",
        help="Istio's MeshConfig (the `istio` ConfigMap's `mesh` key, mounted), watched for "
        "outboundTrafficPolicy.mode; missing: the defaults (env MESH_CONFIG_FILE)",
    )
    parser.add_argument(
        "--preferred-service-namespace",
        default=env("PREFERED_SERVICE_NAMESPACE"),
        metavar="NS",
        help="the DNS proxy answers a hostname defined in several namespaces (none of them the "
        "client's) with this namespace's service (env PREFERED_SERVICE_NAMESPACE)",
    )
    parser.add_argument(
        "--bpf-pin-root",
        default=env("ZTUNNEL_BPF_PIN_ROOT", "/sys/fs/bpf/ztunnel-py"),
        metavar="DIR",
        help="where capture programs and maps are pinned on a bpffs (mounted if missing), so a "
        "restarted agent finds them",
    )
    parser.add_argument(
        "--bpf-bundle",
        default=env("ZTUNNEL_BPF_BUNDLE", ""),
        metavar="PATH",
        help="the capture programs' bytecode bundle to load (`ztunnel-py bpf bundle` writes "
        "one); default: the one shipped in the package, else one compiled with bcc into "
        "/var/cache/ztunnel-py/bpf",
    )


def add_sidecar_arguments(parser: argparse.ArgumentParser) -> None:
    add_proxy_arguments(parser)
    parser.add_argument(
        "--pod-name",
        default=env("POD_NAME"),
        required=not env("POD_NAME"),
        help="the pod this sidecar serves (env POD_NAME)",
    )
    parser.add_argument(
        "--pod-namespace",
        default=env("POD_NAMESPACE"),
        required=not env("POD_NAMESPACE"),
        help="that pod's namespace (env POD_NAMESPACE)",
    )
    parser.add_argument(
        "--service-account",
        default=env("SERVICE_ACCOUNT", "default"),
        help="that pod's service account, as shown by the admin endpoints (env SERVICE_ACCOUNT); "
        "its identity comes from the mesh state",
    )
    # A sidecar has no enrollment socket, no persisted state and no BPF capture: iptables in
    # its pod brings it the traffic.
    parser.set_defaults(**NO_POD_CAPTURE)

"""Arguments of `ztunnel-py waypoint run`: the shared proxy flags (`runtime.args`) plus who this
waypoint is. Every flag also reads the environment variable Istio's waypoint pods are given."""

from __future__ import annotations

import argparse

from ztunnel_py.runtime.args import NO_POD_CAPTURE, add_proxy_arguments, env


def add_waypoint_arguments(parser: argparse.ArgumentParser) -> None:
    add_proxy_arguments(parser)
    parser.add_argument(
        "--pod-name",
        default=env("POD_NAME"),
        required=not env("POD_NAME"),
        help="this waypoint's pod name, for its xDS node id (env POD_NAME)",
    )
    parser.add_argument(
        "--pod-namespace",
        default=env("POD_NAMESPACE"),
        required=not env("POD_NAMESPACE"),
        help="this waypoint's namespace, also its Gateway's (env POD_NAMESPACE)",
    )
    parser.add_argument(
        "--service-account",
        default=env("SERVICE_ACCOUNT", env("ISTIO_META_SERVICE_ACCOUNT")),
        required=not (env("SERVICE_ACCOUNT") or env("ISTIO_META_SERVICE_ACCOUNT")),
        help="the pod's service account: its identity is spiffe://<td>/ns/<ns>/sa/<this> "
        "(env SERVICE_ACCOUNT or ISTIO_META_SERVICE_ACCOUNT)",
    )
    parser.add_argument(
        "--gateway-name",
        default=env("GATEWAY_NAME"),
        help="the Gateway this waypoint implements (env GATEWAY_NAME; default: the service "
        "account, which Istio names after the Gateway)",
    )
    parser.add_argument(
        "--domain-suffix",
        default=env("DOMAIN_SUFFIX", "cluster.local"),
        help="the cluster's DNS suffix, for the waypoint's own Service hostname "
        "(env DOMAIN_SUFFIX)",
    )
    parser.add_argument(
        "--hbone-address",
        default=env("WAYPOINT_HBONE_ADDRESS", "[::]:15008"),
        metavar="IP:PORT",
        help="where HBONE is accepted (env WAYPOINT_HBONE_ADDRESS)",
    )
    # A waypoint has no enrollment socket, no persisted pod state and no capture: it terminates
    # HBONE itself and its pod is not captured.
    parser.set_defaults(**NO_POD_CAPTURE)

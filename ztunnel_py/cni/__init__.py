"""`ztunnel-py cni`: the CNI plugin that enrolls pods of ambient namespaces with the node agent.

`spec` parses and decides without I/O; `plugin` runs a request against the agent's enrollment
socket; `kube` reads labels and service accounts from the API server when configured to.

A container runtime executes a plugin as `CNI_PATH/<type>` without arguments, so the package
also installs the executable `ztunnel-py-cni` (`binary`): put it (or a symlink to it) in the
node's CNI bin directory and name it in the network configuration with `"type":
"ztunnel-py-cni"`, chained after the primary plugin.
"""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> int:
    from ztunnel_py.cni.plugin import main as plugin_main

    return plugin_main(args)


def binary() -> int:
    """The `ztunnel-py-cni` executable: `ztunnel-py cni` for runtimes that pass no arguments."""
    return main(argparse.Namespace())

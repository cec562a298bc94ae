"""Running the mesh's processes from the container image (`testbed up --image IMAGE`).

No container runtime can run pods on our machines (an OCI runtime fails to set its resource
limits here), so each process runs in the image's root filesystem with buildah's chroot
isolation: one working container per process (`buildah from`, named `<prefix><role>`), then
`buildah run --isolation chroot` started inside the node's network namespace like any testbed
process. Chroot isolation keeps the caller's network and pid namespaces and gives the process
a mount namespace of its own with the image's files and the mounts a DaemonSet declares:

- the bpffs, at /run/ztunnel-py/bpffs: chroot isolation mounts /sys read-only over anything
  below it, so the pins cannot live under /sys/fs/bpf inside (in a pod they do);
- /run/netns, where named network namespaces live (a restarted agent finds its pods there);
- the testbed's state directory at the same path, so the command lines are the ones a process
  from the virtual environment gets (sockets, tokens, the CA root, logs);

and only the capabilities deploy/ grants its container (all dropped; the agent then gets
NET_ADMIN, SYS_ADMIN and NET_RAW back), so a missing capability shows here as it would in a
cluster.

The CNI side runs as on a node: `ztunnel-py cni-node` from the image installs the host shim
into the node's simulated host root (`NODEDIR/host/opt/cni/bin`, `.../etc/cni/net.d`, after the
primary configuration the testbed writes as the primary plugin), and the testbed runs that shim
as a runtime does (`runtime.py`). `testbed down` removes the working containers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ztunnel_py.testbed.errors import TestbedError

ENTRYPOINT = "/opt/ztunnel-py/bin/ztunnel-py"
BPFFS = "/run/ztunnel-py/bpffs"
SHIM = "/opt/ztunnel-py/cni/ztunnel-py-cni"
HOST_MOUNTS = (
    ("/sys/fs/bpf", BPFFS, "rw"),
    ("/run/netns", "/run/netns", "rw"),
)
BUILDAH_TIMEOUT = 120.0
# What deploy/ grants each command's container: `drop: [ALL]`, then these (the agent: tc and
# routes in pods' namespaces, setns, bpf(2), transparent sockets; the others nothing).
# buildah's own defaults, dropped by name (its `--cap-drop=ALL` also drops what is added).
BUILDAH_DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)
CAPABILITIES = {
    "agent": ("CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_RAW"),
}


def _buildah(*args: str) -> str:
    try:
        done = subprocess.run(
            ["buildah", *args],
            capture_output=True,
            text=True,
            timeout=BUILDAH_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise TestbedError(
            "--image needs buildah (apt-get install buildah; scripts/build-image.sh installs it)"
        ) from None
    if done.returncode != 0:
        raise TestbedError(f"buildah {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def check_image(image: str) -> str:
    """The image's id; TestbedError if there is no such local image."""
    try:
        return _buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", image)
    except TestbedError as e:
        raise TestbedError(
            f"no local image {image!r} ({e}); build one with scripts/build-image.sh"
        ) from None


def container_name(prefix: str, role: str) -> str:
    return prefix + role.replace("/", "-")


def create_container(image: str, name: str) -> None:
    """A fresh working container `name` of `image` (an old one of that name is replaced)."""
    remove_containers([name])
    _buildah("from", "--pull-never", "--name", name, image)


def remove_containers(names: list[str]) -> None:
    if not names:
        return
    present = set(_buildah("containers", "--noheading", "--format", "{{.ContainerName}}").split())
    for name in names:
        if name in present:
            _buildah("rm", name)


def containers_of(prefix: str) -> list[str]:
    """The working containers a testbed with `prefix` made (their names carry it)."""
    try:
        listed = _buildah("containers", "--noheading", "--format", "{{.ContainerName}}")
    except TestbedError:
        return []
    return [n for n in listed.split() if n.startswith(prefix)]


def run_argv(container: str, state_dir: Path, args: list[str]) -> list[str]:
    """argv running `ztunnel-py ARGS...` in `container` with the DaemonSet's mounts and
    capabilities."""
    mounts = [
        f"--cap-drop={','.join(BUILDAH_DEFAULT_CAPABILITIES)}",
        *(f"--cap-add={cap}" for cap in CAPABILITIES.get(args[0], ())),
    ]
    for source, target, mode in (*HOST_MOUNTS, (str(state_dir), str(state_dir), "rw")):
        if Path(source).exists():
            mounts += ["--volume", f"{source}:{target}:{mode}"]
    return [
        "buildah",
        "run",
        "--isolation",
        "chroot",
        *mounts,
        container,
        "--",
        ENTRYPOINT,
        *args,
    ]


def primary_config(name: str) -> str:
    """The configuration the testbed writes as the node's primary plugin (it plays that plugin:
    it creates the pods' veths itself); the CNI node pod chains the shim after it."""
    return (
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": name,
                "plugins": [{"type": "ptp", "ipam": {"type": "host-local"}}],
            },
            indent=2,
        )
        + "\n"
    )

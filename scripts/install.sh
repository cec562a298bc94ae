#!/usr/bin/env bash
# Idempotent setup for a Debian 12 / Ubuntu machine (run as root). Used by the README, .ci/run,
# the Dockerfile and vagrant/ alike, so a green CI run means a fresh machine works too.
#   scripts/install.sh            system packages + venv (.venv) + ztunnel_py with the dev and
#                                 bench extras
#   ZTUNNEL_VENV=/opt/zt scripts/install.sh --no-dev   runtime only (container images)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ZTUNNEL_VENV:-$repo/.venv}"
extra="[dev,bench]"
[ "${1:-}" = "--no-dev" ] && extra=""

log() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh must run as root (it installs Debian packages and kernel header links)" >&2
    exit 1
fi

# iptables: sidecar mode (the benchmark's comparison) redirects with it, and tests use it and
# nftables to prove ambient capture adds no rule.
packages=(python3 python3-venv python3-bpfcc bpfcc-tools iproute2 curl iperf3 nghttp2-client
          tcpdump procps psmisc kmod ca-certificates iptables nftables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# bcc compiles our BPF C at load time and needs kernel headers. Debian's generic headers package
# compiles our programs on newer kernels too; prefer the exact version when the archive has it.
headers_pkg="linux-headers-$(uname -r)"
if [ ! -e "/lib/modules/$(uname -r)/build/include" ]; then
    if ! dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "install ok installed" \
       && ! dpkg-query -W -f='${Status}' "$headers_pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=(__headers__)
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    pkgs=()
    for p in "${missing[@]}"; do
        if [ "$p" = "__headers__" ]; then
            if apt-cache show "$headers_pkg" >/dev/null 2>&1; then pkgs+=("$headers_pkg");
            else pkgs+=(linux-headers-amd64); fi
        else
            pkgs+=("$p")
        fi
    done
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# Prometheus for `testbed up --prometheus`: the testbed runs its own prometheus process in a
# network namespace of its own, so the package's service must never start on this machine.
# A policy-rc.d that refuses every start keeps the install from starting it (one that is already
# there, as in containers, is left alone), and the unit is disabled where systemd runs.
if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed"; then
    log "installing prometheus (its own service stays off: the testbed runs its own process)"
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        made_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [ -n "$made_policy" ]; then rm -f "$policy"; trap - EXIT; fi
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

# Point /lib/modules/$(uname -r)/{build,source} at the newest installed headers when the running
# kernel ships none (bcc looks there first).
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/include" ]; then
    hdr="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
    common="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -z "$hdr" ]; then
        echo "no kernel headers under /usr/src; install linux-headers-amd64" >&2
        exit 1
    fi
    log "linking $kdir/build -> $hdr"
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "${common:-$hdr}" "$kdir/source"
fi

# The venv uses Debian's python3 so the python3-bpfcc module (pure Python over libbcc) matches.
if [ ! -x "$venv/bin/python" ]; then
    log "creating virtual environment $venv"
    /usr/bin/python3 -m venv "$venv"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Expose only bcc from Debian's dist-packages, not every system package.
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi
log "installing ztunnel_py${extra} into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
"$venv/bin/pip" install -q --disable-pip-version-check -e "$repo$extra"
if [ -n "$extra" ]; then
    # The example user filter (a separate package with an entry point), so the waypoint tests
    # and the README's WasmPlugin example find it installed, as a user's filter would be.
    "$venv/bin/pip" install -q --disable-pip-version-check "$repo/examples/ratelimit-filter"
fi
"$venv/bin/python" -c 'import bcc' || { echo "bcc is not importable from $venv" >&2; exit 1; }
ln -sfn "$venv/bin/ztunnel-py" /usr/local/bin/ztunnel-py
log "done: $("$venv/bin/ztunnel-py" --version)"

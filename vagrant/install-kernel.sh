#!/usr/bin/env bash
# Install another kernel in the Vagrant box (run as root by the Vagrantfile's "kernel"
# provisioner, which reboots into it afterwards). One argument, ZT_VAGRANT_KERNEL:
#   backports              Debian's newest kernel and headers from <release>-backports
#   NAME... / URL.deb...   Debian packages by name, and/or .deb files to download (e.g. the
#                          linux-image, linux-modules and linux-headers debs of an Ubuntu
#                          mainline build)
# GRUB boots the newest installed kernel, so install a kernel newer than the box's own.
set -euo pipefail
spec="${1:?usage: install-kernel.sh backports | PACKAGE... | URL.deb...}"
export DEBIAN_FRONTEND=noninteractive

if [ "$spec" = "backports" ]; then
    # shellcheck source=/dev/null
    . /etc/os-release
    if [ "$ID" != "debian" ]; then
        echo "ZT_VAGRANT_KERNEL=backports needs a Debian box (this is $ID)" >&2
        exit 1
    fi
    echo "deb http://deb.debian.org/debian ${VERSION_CODENAME}-backports main" \
        >/etc/apt/sources.list.d/ztunnel-backports.list
    apt-get update -qq
    apt-get install -y -qq -t "${VERSION_CODENAME}-backports" linux-image-amd64 linux-headers-amd64
else
    apt-get update -qq
    packages=()
    downloads="$(mktemp -d)"
    for item in $spec; do
        case "$item" in
            http://*.deb | https://*.deb)
                command -v curl >/dev/null || apt-get install -y -qq curl ca-certificates
                curl -fsSL --retry 3 -o "$downloads/$(basename "$item")" "$item"
                packages+=("$downloads/$(basename "$item")")
                ;;
            *) packages+=("$item") ;;
        esac
    done
    apt-get install -y -qq "${packages[@]}"
fi
echo "installed; kernels now in /boot:"
ls /boot/vmlinuz-*

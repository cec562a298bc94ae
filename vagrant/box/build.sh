#!/usr/bin/env bash
# Build a Vagrant box (libvirt provider) for the kernel-path tests from Debian's archive alone:
# debootstrap Debian 12 into a folder, install the chosen kernel with its headers (bcc compiles
# our BPF programs against them) and the packages scripts/install.sh would install, add the
# `vagrant` user with Vagrant's insecure key and password-less sudo, then pack the folder into an
# ext4 disk image (mkfs.ext4 -d: no loop device, no partition table) converted to qcow2.
# The box boots that image by direct kernel boot: the kernel and initrd ride in the box beside
# box.img and the box's own Vagrantfile points libvirt at them, so no bootloader is needed.
#
#   vagrant/box/build.sh KERNEL            build (or reuse) and `vagrant box add` it
#   vagrant/box/build.sh KERNEL --no-add   build (or reuse) only; prints the box folder
#
# KERNEL is one of:
#   debian-6.1    Debian 12's own kernel (linux-image-amd64 of bookworm)
#   debian-6.12   Debian 12's backports kernel (linux-image-amd64 of bookworm-backports)
#   debian-5.10   Debian 11's kernel (linux-image-amd64 of bullseye) in the Debian 12 userland
#
# Boxes are cached under $ZT_BOX_CACHE (default /var/cache/ztunnel-py/boxes), one folder per
# kernel and recipe hash: a change to this folder's files builds a new box, an unchanged recipe
# reuses the last one. The box is added as ztunnel-py/KERNEL.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kernel="${1:?usage: build.sh debian-6.1|debian-6.12|debian-5.10 [--no-add]}"
add=1
[ "${2:-}" = "--no-add" ] && add=""
cache="${ZT_BOX_CACHE:-/var/cache/ztunnel-py/boxes}"
mirror="${ZT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
disk_gib="${ZT_BOX_DISK_GIB:-12}"

log() { printf '\033[1m[box %s]\033[0m %s\n' "$kernel" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$kernel" in
    debian-6.1) kernel_suite=bookworm ;;
    debian-6.12) kernel_suite=bookworm-backports ;;
    debian-5.10) kernel_suite=bullseye ;;
    *) die "unknown kernel '$kernel' (known: debian-6.1 debian-6.12 debian-5.10)" ;;
esac

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and chroot)"
for tool in debootstrap mkfs.ext4 qemu-img; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install debootstrap e2fsprogs qemu-utils"
done

# Vagrant's insecure key pair: the box authorises its public half, as Vagrant expects of a box.
insecure_pub="$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n 1 || true)"
[ -n "$insecure_pub" ] || die "Vagrant's insecure key is missing: apt-get install vagrant"

recipe_hash="$(cat "$here"/build.sh "$here"/Vagrantfile.box "$insecure_pub" | sha256sum | cut -c1-12)"
out="$cache/$kernel-$recipe_hash"
name="ztunnel-py/$kernel"

add_box() {
    [ -n "$add" ] || return 0
    command -v vagrant >/dev/null || die "vagrant is missing: apt-get install vagrant vagrant-libvirt"
    # A box added from this very build carries its hash in box-hash: add again only on change.
    local stamp="$HOME/.vagrant.d/boxes/${name//\//-VAGRANTSLASH-}/0/libvirt/box-hash"
    if [ "$(cat "$stamp" 2>/dev/null || true)" = "$recipe_hash" ]; then
        log "box $name is up to date ($recipe_hash)"
        return 0
    fi
    log "vagrant box add $name"
    vagrant box add --force --name "$name" "$out/$kernel.box" >&2
}

if [ -f "$out/$kernel.box" ]; then
    log "reusing $out (recipe $recipe_hash)"
    add_box
    echo "$out"
    exit 0
fi

start=$SECONDS
work="$out.tmp"
rm -rf "$work"
mkdir -p "$work"
root="$work/root"
# Unmount everything under the build root before removing it, and never let rm cross into a
# mount (a bind-mounted /dev left behind would otherwise be emptied).
unmount_root() {
    local m
    for m in $(awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" || true
    done
}
cleanup() {
    unmount_root
    if awk -v r="$root/" 'index($2, r) == 1 {found=1} END {exit !found}' /proc/mounts; then
        log "mounts remain under $root: leaving $work in place"
    else
        rm -rf --one-file-system "$work"
    fi
}
trap cleanup EXIT

# What scripts/install.sh installs, so the guest's install only builds the venv; plus what a
# Vagrant box needs (sshd, sudo, rsync for the synced folder) and a systemd to boot.
packages=(systemd-sysv udev dbus openssh-server sudo rsync kmod
          initramfs-tools zstd ca-certificates
          python3 python3-venv python3-bpfcc bpfcc-tools iproute2 curl iperf3 nghttp2-client
          tcpdump procps psmisc iptables nftables)
log "debootstrap bookworm (minbase + ${#packages[@]} packages) into $root"
# A failed download fails debootstrap at once: try again twice before giving up.
for attempt in 1 2 3; do
    debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
        bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 && break
    [ "$attempt" -lt 3 ] || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    log "debootstrap failed ($(tail -n 1 "$work/debootstrap.log")); trying again in 10 s"
    unmount_root
    rm -rf --one-file-system "$root"
    sleep 10
done
log "debootstrap done ($((SECONDS - start)) s)"

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

# Nothing may start services inside the chroot (sshd, prometheus): policy-rc.d refuses them.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $mirror bookworm-backports main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
if [ "$kernel_suite" = bullseye ]; then
    echo "deb $mirror bullseye main" >>"$root/etc/apt/sources.list"
fi
in_root apt-get update -qq

log "installing the kernel and headers from $kernel_suite"
case "$kernel_suite" in
    bookworm) in_root apt-get install -y -qq --no-install-recommends linux-image-amd64 linux-headers-amd64 ;;
    bookworm-backports) in_root apt-get install -y -qq --no-install-recommends -t bookworm-backports \
        linux-image-amd64 linux-headers-amd64 ;;
    bullseye)
        # bullseye's metapackages name the versioned kernel; its headers depend on gcc-10, which
        # bookworm still ships. bcc compiles with its own clang, so gcc is only a dependency.
        version="$(in_root apt-cache depends -t bullseye linux-image-amd64 2>/dev/null \
            | awk '/Depends: linux-image-5/ {print $2; exit}' | sed 's/^linux-image-//')"
        [ -n "$version" ] || die "bullseye serves no linux-image-5.10"
        in_root apt-get install -y -qq --no-install-recommends \
            "linux-image-$version/bullseye" "linux-headers-$version/bullseye" ;;
esac >"$work/kernel.log" 2>&1 || { tail -n 20 "$work/kernel.log" >&2; die "kernel install failed"; }
vmlinuz="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)"
release="${vmlinuz##*/vmlinuz-}"
log "kernel $release ($((SECONDS - start)) s)"

log "installing prometheus (the testbed runs its own process; its service stays disabled)"
in_root apt-get install -y -qq --no-install-recommends prometheus >"$work/prometheus.log" 2>&1 \
    || { tail -n 20 "$work/prometheus.log" >&2; die "prometheus install failed"; }
in_root systemctl disable prometheus.service >/dev/null 2>&1 || true
in_root apt-get clean

log "configuring the guest"
echo ztunnel-py >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 ztunnel-py\n::1 localhost ip6-localhost\n' >"$root/etc/hosts"
echo "LABEL=ztroot / ext4 defaults,noatime 0 1" >"$root/etc/fstab"
# Every NIC takes DHCP, whatever slot and name it gets: qemu's user-mode network hands out the
# address, and its resolver is at 10.0.2.3.
cat >"$root/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
# The guest trusts what this machine trusts (an egress CA, where there is one) so pip inside
# reaches the same package index as pip here.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null 2>&1
fi
echo "nameserver 10.0.2.3" >"$root/etc/resolv.conf"
in_root useradd -m -s /bin/bash vagrant
echo "vagrant:vagrant" | in_root chpasswd
echo "vagrant ALL=(ALL) NOPASSWD: ALL" >"$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"
install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$insecure_pub" "$root/home/vagrant/.ssh/authorized_keys"
printf 'UseDNS no\nPasswordAuthentication no\n' >"$root/etc/ssh/sshd_config.d/vagrant.conf"
# Host keys are made at first boot, so two VMs from one box do not share them.
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
# The unit's own ExecStartPre (sshd -t) fails without host keys, so the key step goes first.
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    >"$root/etc/systemd/system/ssh.service.d/hostkeys.conf"
in_root systemctl enable ssh.service serial-getty@ttyS0.service >/dev/null 2>&1
# A fixed machine-id would be shared by every VM; an empty one is filled in at boot.
: >"$root/etc/machine-id"
rm -f "$root/usr/sbin/policy-rc.d"

cp "$vmlinuz" "$work/vmlinuz"
cp "$root/boot/initrd.img-$release" "$work/initrd.img"
unmount_root

log "making the ${disk_gib} GiB ext4 image"
mkfs.ext4 -q -F -L ztroot -d "$root" "$work/root.raw" "${disk_gib}G"
qemu-img convert -O qcow2 "$work/root.raw" "$work/box.img"
rm -f "$work/root.raw"
rm -rf --one-file-system "$root"

cat >"$work/metadata.json" <<EOF
{"provider": "libvirt", "format": "qcow2", "virtual_size": $disk_gib}
EOF
cp "$here/Vagrantfile.box" "$work/Vagrantfile"
echo "$recipe_hash" >"$work/box-hash"
echo "$release" >"$work/kernel-release"
tar -C "$work" -cf "$work/$kernel.box" metadata.json Vagrantfile box-hash kernel-release \
    vmlinuz initrd.img box.img
# The unpacked files stay beside the .box: the direct-qemu path boots them without Vagrant.
rm -rf --one-file-system "$out"
mv "$work" "$out"
trap - EXIT
# Boxes of this kernel from older recipes are of no more use.
for old in "$cache/$kernel"-*; do
    [ "$old" = "$out" ] || [ "${old%.tmp}" != "$old" ] || rm -rf --one-file-system "$old"
done
log "built $out ($(du -sh "$out/box.img" | cut -f1) image, $((SECONDS - start)) s)"
add_box
echo "$out"

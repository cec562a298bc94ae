#!/usr/bin/env bash
# The kernel-path tests on another kernel, in one command (run as root):
#
#   scripts/kernel-test.sh KERNEL [PYTEST ARGS...]
#   scripts/kernel-test.sh debian-6.1 tests/netns/test_redirect.py
#
# builds or reuses the Vagrant box for KERNEL (vagrant/box/build.sh: debian-6.1, debian-6.12,
# debian-5.10), boots it, copies this checkout in, runs scripts/install.sh and then
# vagrant/kernel-tests.sh (pytest on tests/netns or the given tests, as root, a skipped test
# failing the run), copies the results out to kernel-test-results/KERNEL/, destroys the VM and
# exits with the tests' status.
#
# How the VM runs, both on qemu with user-mode networking (nothing is added to this machine's
# network namespace: ssh reaches the guest through a forwarded 127.0.0.1 port):
#   ZT_VM_DRIVER=vagrant  `vagrant up` with vagrant-libvirt and the provisioners of
#                         vagrant/Vagrantfile (default when vagrant-libvirt is installed)
#   ZT_VM_DRIVER=qemu     qemu-system-x86_64 started directly on the same box image, the same
#                         two scripts run over ssh
# Acceleration is probed first: KVM when a kernel boots under it within a few seconds, else TCG
# (software emulation), with the reason printed. ZT_VM_ACCEL=kvm|tcg skips the probe.
#
# Bounds (seconds): ZT_BOX_BUILD_TIMEOUT (1800), ZT_VM_BOOT_TIMEOUT (900), ZT_VM_INSTALL_TIMEOUT
# (1800), ZT_VM_TEST_TIMEOUT (3600). Size: ZT_VM_CPUS (2), ZT_VM_MEMORY (4096 MiB).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kernel="${1:?usage: scripts/kernel-test.sh KERNEL [PYTEST ARGS...]  (KERNEL: debian-6.1, debian-6.12, debian-5.10)}"
shift
cpus="${ZT_VM_CPUS:-2}"
memory="${ZT_VM_MEMORY:-4096}"
build_timeout="${ZT_BOX_BUILD_TIMEOUT:-1800}"
boot_timeout="${ZT_VM_BOOT_TIMEOUT:-900}"
install_timeout="${ZT_VM_INSTALL_TIMEOUT:-1800}"
test_timeout="${ZT_VM_TEST_TIMEOUT:-3600}"
guest_repo=/work/ztunnel_py
out="$repo/kernel-test-results/$kernel"
started=$SECONDS

log() { printf '\033[1m[kernel-test %s +%ds]\033[0m %s\n' "$kernel" "$((SECONDS - started))" "$*" >&2; }
die() { log "error: $*"; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (box build, VM, and the tests inside are root's)"
command -v qemu-system-x86_64 >/dev/null \
    || die "qemu is missing: apt-get install qemu-system-x86 qemu-utils debootstrap vagrant vagrant-libvirt libvirt-daemon libvirt-clients"

driver="${ZT_VM_DRIVER:-}"
if [ -z "$driver" ]; then
    if command -v vagrant >/dev/null && command -v libvirtd >/dev/null \
        && ls -d /usr/share/rubygems-integration/all/gems/vagrant-libvirt-* >/dev/null 2>&1; then
        driver=vagrant
    else
        driver=qemu
    fi
fi
case "$driver" in vagrant | qemu) ;; *) die "ZT_VM_DRIVER must be vagrant or qemu" ;; esac

run="$(mktemp -d /tmp/zt-kernel-test.XXXXXX)"
qemu_pid=""
started_libvirtd=""
started_virtlogd=""
vagrant_up=""

cleanup() {
    local status=$?
    set +e
    if [ -n "$vagrant_up" ]; then
        log "destroying the VM (vagrant destroy)"
        (cd "$repo/vagrant" && timeout 180 vagrant destroy -f >"$run/destroy.log" 2>&1) \
            || log "vagrant destroy failed: $(tail -n 3 "$run/destroy.log")"
    fi
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        log "stopping the VM (qemu pid $qemu_pid)"
        kill "$qemu_pid"
        for _ in $(seq 20); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$qemu_pid" 2>/dev/null
    fi
    [ -n "$started_libvirtd" ] && kill "$started_libvirtd" 2>/dev/null
    [ -n "$started_virtlogd" ] && kill "$started_virtlogd" 2>/dev/null
    rm -rf "$run"
    log "done in $((SECONDS - started)) s, status $status"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The box.
log "box: building or reusing ztunnel-py/$kernel (bounded by ${build_timeout} s)"
build_args=("$kernel")
[ "$driver" = qemu ] && build_args+=(--no-add)
box="$(timeout "$build_timeout" "$repo/vagrant/box/build.sh" "${build_args[@]}")" \
    || die "box build failed or timed out"
box="$(echo "$box" | tail -n 1)"
log "box: $box (kernel $(cat "$box/kernel-release"))"

# 2. Acceleration. This machine may itself be a VM: /dev/kvm can exist and still hang a guest
# (seen: a Debian kernel under KVM with -cpu host stops after "Probing EDD"). So boot the box's
# kernel under each candidate for a few seconds and keep the first that reaches userspace.
reaches_userspace() {  # ACCEL CPU SECONDS
    local console="$run/probe-$1-$2.log" pid
    : >"$console"
    qemu-system-x86_64 -machine "q35,accel=$1" -cpu "$2" -smp 1 -m 512 -display none \
        -monitor none -serial "file:$console" -no-reboot -nodefaults \
        -kernel "$box/vmlinuz" -initrd "$box/initrd.img" \
        -append "console=ttyS0 loglevel=7 panic=-1 root=/dev/nonexistent" &
    pid=$!
    for _ in $(seq $(($3 * 2))); do
        grep -q "Run /init as init process" "$console" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    grep -q "Run /init as init process" "$console"
}
accel="${ZT_VM_ACCEL:-}"
cpu=""
if [ -z "$accel" ]; then
    if [ ! -w /dev/kvm ]; then
        accel=tcg
        log "acceleration: TCG (software emulation): /dev/kvm is absent or not writable"
    elif reaches_userspace kvm host 20; then
        accel=kvm cpu=host
        log "acceleration: KVM (the kernel reached userspace under KVM with -cpu host)"
    else
        accel=tcg
        log "acceleration: TCG (software emulation): /dev/kvm is there, but a kernel under KVM" \
            "did not reach userspace in 20 s (last console line:" \
            "$(tail -n 1 "$run/probe-kvm-host.log" | tr -d '\r'))"
    fi
fi
if [ -z "$cpu" ]; then
    if [ "$accel" = kvm ]; then cpu=host; else cpu=qemu64; fi
fi
log "VM: $driver driver, $accel, cpu $cpu, $cpus vCPUs, ${memory} MiB"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Vagrant's insecure private key, as Vagrant's own first login uses it (ssh wants it mode 600).
key="$run/insecure-key"
install -m 600 "$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant | head -n 1)" "$key"
ssh_opts=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
          -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=8
          -o IdentitiesOnly=yes -p "$port")

mkdir -p "$out"
rm -f "$out"/*

# Run a step bounded in time, its output indented on stderr (progress bars folded away) and
# kept in LOG; returns the step's status.
logged() {  # LOG SECONDS COMMAND...
    local log_file="$1" seconds="$2"
    shift 2
    set +e
    timeout "$seconds" "$@" 2>&1 | stdbuf -oL tr '\r' '\n' | grep --line-buffered -v 'Progress: ' \
        | tee "$log_file" | sed -u 's/^/  | /' >&2
    local status=${PIPESTATUS[0]}
    set -e
    return "$status"
}
if [ "$driver" = vagrant ]; then
    # vagrant-libvirt talks to the system libvirtd; start one (and its log daemon) when none
    # runs, and stop it afterwards. It defines no network, so it adds no bridge.
    if [ ! -S /run/libvirt/libvirt-sock ]; then
        log "starting libvirtd (no networks defined: the VM uses qemu's user-mode network)"
        # Without libvirt-daemon-system (whose default network would add virbr0 here) nothing
        # made the user libvirt's qemu driver insists on, nor its log folder; and qemu runs as
        # root so it can read the box's kernel under /root/.vagrant.d.
        getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home \
            --home-dir /var/lib/libvirt --shell /usr/sbin/nologin --user-group libvirt-qemu
        mkdir -p /var/log/libvirt /run/libvirt
        [ -e /etc/libvirt/qemu.conf ] || printf 'user = "root"\ngroup = "root"\n' >/etc/libvirt/qemu.conf
        virtlogd --daemon --pid-file "$run/virtlogd.pid"
        libvirtd --daemon --pid-file "$run/libvirtd.pid"
        for _ in $(seq 40); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.5; done
        started_virtlogd="$(cat "$run/virtlogd.pid" 2>/dev/null || true)"
        started_libvirtd="$(cat "$run/libvirtd.pid" 2>/dev/null || true)"
        [ -S /run/libvirt/libvirt-sock ] || die "libvirtd did not start"
    fi
    if [ "$accel" = kvm ]; then domain_type=kvm; else domain_type=qemu; fi
    if [ "$cpu" = host ]; then vcpu=host-passthrough; else vcpu="$cpu"; fi
    export ZT_VAGRANT_BOX="ztunnel-py/$kernel" ZT_VAGRANT_CPUS="$cpus" ZT_VAGRANT_MEMORY="$memory"
    export ZT_VAGRANT_SSH_PORT="$port" ZT_VAGRANT_DOMAIN_TYPE="$domain_type" ZT_VAGRANT_CPU="$vcpu"
    export ZT_VAGRANT_PYTEST="$*"
    # This run's machine state lives in the run folder, so runs never share a VM.
    export VAGRANT_DOTFILE_PATH="$run/vagrant"
    cd "$repo/vagrant"
    export ZT_VAGRANT_CONSOLE_LOG="$out/console.log"
    log "vagrant up (boot and rsync of the checkout, bounded by ${boot_timeout} s;" \
        "console: $out/console.log)"
    vagrant_up=1
    logged "$out/vagrant-up.log" "$boot_timeout" vagrant up --provider=libvirt --no-provision \
        || die "vagrant up failed or timed out (see $out/vagrant-up.log)"
    log "provision install: scripts/install.sh in the guest (bounded by ${install_timeout} s)"
    logged "$out/install.log" "$install_timeout" vagrant provision --provision-with install \
        || die "install failed or timed out (see $out/install.log)"
    log "provision kernel-tests (bounded by ${test_timeout} s)"
    logged "$run/tests.log" "$test_timeout" vagrant provision --provision-with kernel-tests || true
    vagrant ssh-config >"$run/ssh-config" 2>/dev/null || true
    fetch() { timeout 120 ssh -F "$run/ssh-config" "${ssh_opts[@]}" default "$@"; }
else
    overlay="$run/disk.qcow2"
    qemu-img create -q -f qcow2 -b "$box/box.img" -F qcow2 "$overlay"
    log "booting qemu directly (console: $out/console.log)"
    qemu-system-x86_64 -machine "q35,accel=$accel" -cpu "$cpu" -smp "$cpus" -m "$memory" \
        -display none -monitor none -serial "file:$out/console.log" -no-reboot \
        -drive "file=$overlay,if=virtio,format=qcow2" \
        -kernel "$box/vmlinuz" -initrd "$box/initrd.img" \
        -append "root=LABEL=ztroot rw console=ttyS0 net.ifnames=1" \
        -netdev "user,id=ztnet0,hostfwd=tcp:127.0.0.1:$port-:22" \
        -device virtio-net-pci,netdev=ztnet0 \
        -daemonize -pidfile "$run/qemu.pid"
    qemu_pid="$(cat "$run/qemu.pid")"
    guest=(ssh "${ssh_opts[@]}" -i "$key" vagrant@127.0.0.1)
    fetch() { timeout 120 "${guest[@]}" "$@"; }
    log "waiting for the guest's sshd (bounded by ${boot_timeout} s)"
    deadline=$((SECONDS + boot_timeout))
    until timeout 20 "${guest[@]}" true 2>/dev/null; do
        kill -0 "$qemu_pid" 2>/dev/null || die "qemu exited (see $out/console.log)"
        [ $SECONDS -lt $deadline ] || die "no ssh after ${boot_timeout} s (see $out/console.log)"
        last="$(tail -n 1 "$out/console.log" | tr -d '\r' | cut -c1-100)"
        log "  booting: $last"
        sleep 10
    done
    log "guest is up; copying the checkout to $guest_repo"
    timeout 60 "${guest[@]}" "sudo mkdir -p $guest_repo"
    timeout 600 rsync -a --delete --rsync-path="sudo rsync" \
        -e "ssh ${ssh_opts[*]} -i $key" \
        --exclude .git/ --exclude .venv/ --exclude '*.egg-info/' --exclude __pycache__/ \
        --exclude .mypy_cache/ --exclude .pytest_cache/ --exclude .ruff_cache/ \
        --exclude .hypothesis/ --exclude build/ --exclude bench-results/ \
        --exclude vagrant/.vagrant/ --exclude kernel-test-results/ \
        "$repo/" "vagrant@127.0.0.1:$guest_repo/"
    log "install: scripts/install.sh in the guest (bounded by ${install_timeout} s)"
    logged "$out/install.log" "$install_timeout" "${guest[@]}" "sudo bash $guest_repo/scripts/install.sh" \
        || die "install failed or timed out (see $out/install.log)"
    log "kernel-tests (bounded by ${test_timeout} s)"
    logged "$run/tests.log" "$test_timeout" \
        "${guest[@]}" "sudo bash $guest_repo/vagrant/kernel-tests.sh $(printf '%q ' "$@")" || true
fi

log "copying the results to $out"
fetch "sudo tar -C $guest_repo/kernel-test-results -cf - ." | tar -C "$out" -xf - \
    || die "could not copy the results out of the guest"
[ -f "$out/status" ] || die "the tests did not finish (no status in the results)"
status="$(cat "$out/status")"
log "tests exited with status $status ($(tail -n 1 "$out/pytest.log"))"
exit "$status"

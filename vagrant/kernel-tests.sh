#!/usr/bin/env bash
# The kernel-path tests inside the VM (run as root by the Vagrantfile's "kernel-tests"
# provisioner, and over ssh by scripts/kernel-test.sh's direct-qemu path): pytest on tests/netns
# or the given tests, a skipped test failing the run. The log, a JUnit report and what the agent
# detects of the kernel land in kernel-test-results/ of the guest's checkout, for the host to
# copy out.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
results="kernel-test-results"
rm -rf "$results"
mkdir -p "$results"
# Options alone (e.g. "-x -k cni") run on all of tests/netns; named tests run on their own.
names_tests=""
for arg in "$@"; do
    [ -e "${arg%%::*}" ] && names_tests=1
done
[ -n "$names_tests" ] || set -- tests/netns "$@"
kernel="kernel $(uname -r) on $(. /etc/os-release && echo "$PRETTY_NAME")"
echo "$kernel" | tee "$results/kernel.txt"
# Whether the agent's capture programs (two SCHED_CLS, one SK_LOOKUP) compile, pass the
# verifier and pin on this kernel: the agent's own loader, on its own, before any test needs it.
probe_pins=/sys/fs/bpf/zt-kernel-probe
mount | grep -q ' /sys/fs/bpf ' || mount -t bpf bpf /sys/fs/bpf
rm -rf "$probe_pins"
mkdir -p "$probe_pins"
.venv/bin/python -m ztunnel_py.redirect.compile --pin-dir "$probe_pins" \
    >"$results/capture-programs.json" 2>"$results/capture-programs.stderr" || true
rm -rf "$probe_pins"
echo "capture programs: $(cat "$results/capture-programs.json")"
export ZTUNNEL_FAIL_ON_SKIP=1
.venv/bin/pytest -q -p no:cacheprovider --junitxml="$results/junit.xml" "$@" 2>&1 \
    | tee "$results/pytest.log"
status=${PIPESTATUS[0]}
echo "$status" >"$results/status"
exit "$status"

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
# Whether the agent's capture programs (two SCHED_CLS, one SK_LOOKUP) compile into their
# bundle, pass the verifier and pin on this kernel: the agent's own loader, on its own, before
# any test needs it (the bundle is kept with the results).
probe_pins=/sys/fs/bpf/zt-kernel-probe
mount | grep -q ' /sys/fs/bpf ' || mount -t bpf bpf /sys/fs/bpf
rm -rf "$probe_pins"
.venv/bin/python - "$probe_pins" "$results" >"$results/capture-programs.json" \
    2>"$results/capture-programs.stderr" <<'EOF' || true
import json, sys
from pathlib import Path
from ztunnel_py.redirect.loader import Redirector
from ztunnel_py.redirect.maps import RedirectError
try:
    r = Redirector(sys.argv[1], cache_dir=Path(sys.argv[2]))
except RedirectError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(1)
print(json.dumps({"compile_seconds": r.compile_seconds, "load_seconds": r.load_seconds,
                  "bundle": str(r.bundle_source), "program_ids": r.program_ids()}))
r.close()
r.remove_pins()
EOF
rm -rf "$probe_pins"
echo "capture programs: $(cat "$results/capture-programs.json")"
export ZTUNNEL_FAIL_ON_SKIP=1
.venv/bin/pytest -q -p no:cacheprovider --junitxml="$results/junit.xml" "$@" 2>&1 \
    | tee "$results/pytest.log"
status=${PIPESTATUS[0]}
echo "$status" >"$results/status"
exit "$status"

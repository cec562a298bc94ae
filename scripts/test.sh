#!/usr/bin/env bash
# The README's test command: set up (idempotent), then lint, type-check and run every test.
# Kernel tests need root; a skipped test fails the run. The 30 slowest tests are listed at the
# end, to keep an eye on the run's length.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/install.sh
venv="${ZTUNNEL_VENV:-$repo/.venv}"
echo "== ruff"
"$venv/bin/ruff" check ztunnel_py tests examples
"$venv/bin/ruff" format --check ztunnel_py tests examples
echo "== mypy --strict"
"$venv/bin/mypy" ztunnel_py examples/ratelimit-filter/ztunnel_ratelimit
echo "== pytest"
export ZTUNNEL_FAIL_ON_SKIP=1
exec "$venv/bin/pytest" -q -p no:cacheprovider --durations=30 "$@"

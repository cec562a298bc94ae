#!/usr/bin/env bash
# Longer fuzzing runs: every target (or the ones named) for SECONDS each (default 300), new
# interesting inputs kept in $FUZZ_WORK/<target>/ (default .fuzz/), crashes in
# $FUZZ_WORK/<target>/crash-*. Prints, per target, executions, coverage (libFuzzer's cov: edges
# and ft: features) and crashes found. A crash becomes a regression test by fixing the bug and
# copying the input into tests/fuzz/corpus/<target>/ (tests/fuzz/test_corpus.py replays it).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${ZTUNNEL_VENV:-$repo/.venv}/bin/python"
seconds="${1:-300}"
shift || true
work="${FUZZ_WORK:-$repo/.fuzz}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("$python" -c 'from tests.fuzz.targets import TARGETS; print(*TARGETS, sep="\n")')
fi
printf '%-16s %12s %8s %8s %8s %8s\n' target executions exec/s cov ft crashes
status=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    log="$work/$t.log"
    "$python" -m tests.fuzz.run "$t" "-max_total_time=$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "-artifact_prefix=$work/$t/" "$work/$t" "tests/fuzz/corpus/$t" \
        >"$log" 2>&1 || status=1
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)"
    ft="$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)"
    crashes="$(find "$work/$t" -maxdepth 1 -name 'crash-*' | wc -l)"
    printf '%-16s %12s %8s %8s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
    [ "$crashes" -eq 0 ] || status=1
done
exit "$status"

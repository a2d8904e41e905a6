#!/usr/bin/env bash
# Runs every fuzz target, one after another on one core, for SECONDS each
# (default 600, what issue 10 asks), then shrinks each corpus with cmin.
# Prints each target's executions and whether it found a failing input
# (kept in artifacts/<target>/). Needs nightly and cargo-fuzz (README.md).
# TARGET_DIR overrides where it builds (default: fuzz/target).
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
td=()
[[ -n ${TARGET_DIR:-} ]] && td=(--target-dir "$TARGET_DIR")
cargo +nightly fuzz build -s none "${td[@]}" || exit 1
for t in $(cargo +nightly fuzz list); do
    log=$(mktemp)
    cargo +nightly fuzz run -s none "${td[@]}" "$t" -- \
        -max_total_time="$secs" -jobs=1 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1
    rc=$?
    runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
    if [[ $rc -ne 0 ]]; then
        runs="FAILED (rc $rc): $(grep -Eo '#[0-9]+' "$log" | tail -1) execs; $(grep -m1 -E 'panicked|ERROR' "$log")"
        cp "$log" "artifacts/$t.log" 2>/dev/null || true
    fi
    echo "$t: $runs"
    rm -f "$log"
done
for t in $(cargo +nightly fuzz list); do
    cargo +nightly fuzz cmin -s none "${td[@]}" "$t" >/dev/null 2>&1 || echo "$t: cmin failed"
done

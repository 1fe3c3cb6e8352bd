#!/usr/bin/env bash
# Runs one fuzz target from its seeds: `fuzz/run.sh TARGET [SECONDS]` (default 600), from
# anywhere. New inputs go to fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET, the log to
# fuzz/logs/TARGET.log (all git-ignored). One at a time on a small machine: each takes a core.
set -euo pipefail
target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
seconds=${2:-600}
cd "$(dirname "$0")/.."
mkdir -p "fuzz/corpus/$target" fuzz/logs
nice -n 10 cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
    2>&1 | tee "fuzz/logs/$target.log"

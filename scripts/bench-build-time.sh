#!/usr/bin/env bash
# Cold `cargo build --workspace --bins` of each given revision, one after the other: a fresh
# worktree and an empty target folder per revision (the Cargo registry cache is shared and
# fetched first, so downloads are not timed). BENCHMARKS.md#build-time.
#   scripts/bench-build-time.sh REV...
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
for rev in "$@"; do
  git worktree add -q --detach "$scratch/$rev" "$rev"
  (cd "$scratch/$rev" && cargo fetch -q &&
    CARGO_TARGET_DIR="$scratch/target-$rev" /usr/bin/time -f "$rev: %e s wall, %M KiB peak RSS" \
      cargo build -q --workspace --bins)
  git worktree remove --force "$scratch/$rev"
  rm -rf "$scratch/target-$rev"
done

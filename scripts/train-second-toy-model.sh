#!/usr/bin/env bash
# A second toy model for transfer checks (#25): the shipped recipe (configs/toy/train.yaml)
# with another seed, written outside git. Resumable: run it again after an interruption.
#
#   scripts/train-second-toy-model.sh [OUT_DIR] [SEED]     (default out/toy-model-seed1, 1)
#
# Then e.g. `MODEL=out/toy-model-seed1 pipelines/measure-defaults.sh out/measure-defaults-seed1`.
set -euo pipefail
OUT=${1:-out/toy-model-seed1}
SEED=${2:-1}
BIN=${BIN:-target/debug}
[ -x "$BIN/fmn-toy" ] || cargo build -p fmn-toy
"$BIN/fmn-toy" train --config configs/toy/train.yaml --seed "$SEED" --out "$OUT"

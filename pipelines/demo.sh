#!/usr/bin/env bash
# README command 1: build everything, install the ONNX Runtime and OpenBLAS libraries, and forget `bob` on the
# shipped toy model — render bob's images, segment them, invert, re-steer, sample before/after,
# evaluate — then print the before/after numbers and the report's path.
#
#   pipelines/demo.sh [OUT_DIR]      (default out/demo; rerunning skips finished steps)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/demo}
cargo build --workspace --bins --quiet
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH
FMN_BLAS="$(scripts/install-openblas.sh)"
export FMN_BLAS
if [ ! -f "$OUT/images/bob/manifest.json" ]; then
  rm -rf "$OUT/images/bob"
  target/debug/fmn-toy render --out "$OUT/images/bob" --count 8 --seed 77 --only bob --quiet
fi
PROMPTS=configs/eval/toy-bob-prompts.txt SUITE=configs/eval/toy-bob.yaml \
  pipelines/forget.sh bob object "$OUT/images/bob" "$OUT"

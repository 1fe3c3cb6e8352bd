#!/usr/bin/env bash
# The project's test command (README command 2, called by .ci/run): installs the ONNX Runtime
# library fmn-segment loads at run time and NudeNet 3.4.2's model (which the nudenet preset,
# configs/eval/judges/nudenet.yaml, finds in .cache/nudenet/) and the OpenBLAS library the
# matrix products load (so the tests run that path; fmn-ops/tests/blas.rs checks it is the one
# in use), then runs every crate's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH
FMN_BLAS="$(scripts/install-openblas.sh)"
export FMN_BLAS
scripts/install-nudenet.sh >/dev/null
cargo test --workspace "$@"

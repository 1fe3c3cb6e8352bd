#!/usr/bin/env bash
# The project's test command (README command 2, called by .ci/run): installs the ONNX Runtime
# library fmn-segment loads at run time and NudeNet 3.4.2's model (which the nudenet preset,
# configs/eval/judges/nudenet.yaml, finds in .cache/nudenet/), then runs every crate's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH
scripts/install-nudenet.sh >/dev/null
cargo test --workspace "$@"

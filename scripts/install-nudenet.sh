#!/usr/bin/env bash
# Installs NudeNet 3.4.2's detector model, the `320n.onnx` inside the nudenet 3.4.2 wheel on
# PyPI, for fmn-eval's `--judge onnx:configs/eval/judges/nudenet.yaml` (the preset that gives
# exactly nudenet 3.4.2's detections; tests/fixtures/gen/NUDENET_3.4.2.md).
#
# It fetches the pinned wheel with pip (only the wheel: no Python package is installed, and
# the model is not otherwise published at a fixed address), checks the wheel's sha256,
# extracts nudenet/320n.onnx into .cache/nudenet/3.4.2/ (ignored by git), checks the model's
# sha256 and prints the model's path. The preset's `model:` points there, so nothing else is
# needed:
#
#     scripts/install-nudenet.sh
#     fmn-eval ... --judge onnx:configs/eval/judges/nudenet.yaml
#
# Running it again checks and reuses the model already there. The model's metadata says
# AGPL-3.0 (Ultralytics YOLOv8 export); the nudenet code is MIT.
set -euo pipefail

_nn_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_nn_version="3.4.2"
_nn_wheel_sha256="5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"
_nn_model_sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
_nn_dir="$_nn_root/.cache/nudenet/$_nn_version"
_nn_model="$_nn_dir/320n.onnx"
_nn_python="${PYTHON:-python3}"

_nn_sha256() {
    "$_nn_python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

if [ -f "$_nn_model" ] && [ "$(_nn_sha256 "$_nn_model")" = "$_nn_model_sha256" ]; then
    echo "$_nn_model"
    exit 0
fi

mkdir -p "$_nn_dir"
_nn_tmp="$(mktemp -d)"
trap 'rm -rf "$_nn_tmp"' EXIT
echo "install-nudenet.sh: fetching the nudenet $_nn_version wheel" >&2
"$_nn_python" -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$_nn_tmp" "nudenet==$_nn_version" >&2
"$_nn_python" - "$_nn_tmp" "$_nn_model" "$_nn_wheel_sha256" "$_nn_model_sha256" <<'PY'
import glob, hashlib, os, sys, zipfile
src, out, wheel_sha, model_sha = sys.argv[1:5]
wheels = glob.glob(os.path.join(src, "nudenet-*.whl"))
if len(wheels) != 1:
    sys.exit("install-nudenet.sh: pip fetched no nudenet wheel")
got = hashlib.sha256(open(wheels[0], "rb").read()).hexdigest()
if got != wheel_sha:
    sys.exit("install-nudenet.sh: %s has sha256 %s, expected %s" % (os.path.basename(wheels[0]), got, wheel_sha))
with zipfile.ZipFile(wheels[0]) as z:
    data = z.read("nudenet/320n.onnx")
got = hashlib.sha256(data).hexdigest()
if got != model_sha:
    sys.exit("install-nudenet.sh: nudenet/320n.onnx has sha256 %s, expected %s" % (got, model_sha))
with open(out + ".part", "wb") as f:
    f.write(data)
os.replace(out + ".part", out)
PY

echo "$_nn_model"

#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that fmn-segment loads at run time (the `ort` crate
# is built with `load-dynamic`: nothing is downloaded at build time).
#
# It fetches the onnxruntime wheel from PyPI with pip (only the wheel, no Python packages are
# installed), unpacks its libonnxruntime.so* into .cache/onnxruntime/ (ignored by git) and
# prints the library's path. Use it as
#
#     export ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
#
# Running it again reuses the library already there. ORT_VERSION overrides the version,
# ORT_CACHE the folder.
set -euo pipefail

_ort_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_ort_version="${ORT_VERSION:-1.31.1}"
_ort_dir="${ORT_CACHE:-$_ort_root/.cache/onnxruntime}/$_ort_version"
_ort_python="${PYTHON:-python3}"

_ort_find() {
    find "$_ort_dir" -maxdepth 1 -name 'libonnxruntime.so.*' -type f 2>/dev/null | sort | head -n 1 || true
}

_ort_lib="$(_ort_find)"
if [ -z "$_ort_lib" ]; then
    case "$(uname -s)" in
        Linux) ;;
        *) echo "install-onnxruntime.sh: only Linux is handled; get ONNX Runtime $_ort_version and set ORT_DYLIB_PATH" >&2; exit 1 ;;
    esac
    mkdir -p "$_ort_dir"
    _ort_tmp="$(mktemp -d)"
    trap 'rm -rf "$_ort_tmp"' EXIT
    echo "install-onnxruntime.sh: fetching the onnxruntime $_ort_version wheel" >&2
    "$_ort_python" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$_ort_tmp" "onnxruntime==$_ort_version" >&2
    # A wheel is a zip file: take the shared libraries out of it.
    "$_ort_python" - "$_ort_tmp" "$_ort_dir" <<'PY'
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(src, "onnxruntime-*.whl"))
if not wheels:
    sys.exit("install-onnxruntime.sh: pip fetched no onnxruntime wheel")
with zipfile.ZipFile(wheels[0]) as z:
    names = [n for n in z.namelist() if "/capi/libonnxruntime" in n and ".so" in n]
    if not names:
        sys.exit("install-onnxruntime.sh: no libonnxruntime*.so in " + wheels[0])
    for n in names:
        out = os.path.join(dst, os.path.basename(n))
        with z.open(n) as f, open(out + ".part", "wb") as g:
            g.write(f.read())
        os.chmod(out + ".part", 0o755)
        os.replace(out + ".part", out)
PY
    _ort_lib="$(_ort_find)"
    if [ -z "$_ort_lib" ]; then
        echo "install-onnxruntime.sh: no libonnxruntime.so.* in $_ort_dir after unpacking" >&2
        exit 1
    fi
fi

echo "$_ort_lib"

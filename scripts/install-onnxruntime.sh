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
    echo "install-onnxruntime.sh: fetching the onnxruntime $_ort_version wheel" >&2
    "$_ort_python" "$_ort_root/scripts/lib/wheel_files.py" "onnxruntime==$_ort_version" \
        '/capi/libonnxruntime[^/]*\.so' "$_ort_dir" >/dev/null
    _ort_lib="$(_ort_find)"
    if [ -z "$_ort_lib" ]; then
        echo "install-onnxruntime.sh: no libonnxruntime.so.* in $_ort_dir after unpacking" >&2
        exit 1
    fi
fi

echo "$_ort_lib"

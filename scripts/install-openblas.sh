#!/usr/bin/env bash
# Installs the OpenBLAS library fmn's matrix products load at run time (fmn-ops' `blas`: twice
# the `gemm` crate's speed on the development machine; BENCHMARKS.md#faster-than-pytorch-side-by-side).
# Without it fmn runs on the `gemm` crate, slower, with the same results to rounding.
#
# It fetches the scipy-openblas32 wheel from PyPI with pip (only the wheel, nothing is
# installed), unpacks its libscipy_openblas.so into .cache/openblas/ (ignored by git) and prints
# the library's path. Use it as
#
#     export FMN_BLAS="$(scripts/install-openblas.sh)"
#
# Running it again reuses the library already there. OPENBLAS_VERSION overrides the wheel's
# version, OPENBLAS_CACHE the folder.
set -euo pipefail

_ob_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_ob_version="${OPENBLAS_VERSION:-0.3.34.481.3}"
_ob_dir="${OPENBLAS_CACHE:-$_ob_root/.cache/openblas}/$_ob_version"
_ob_lib="$_ob_dir/libscipy_openblas.so"
case "$(uname -s)-$(uname -m)" in
    Linux-x86_64 | Linux-aarch64) ;;
    *) echo "install-openblas.sh: only Linux x86_64/aarch64 wheels are handled; point FMN_BLAS at an OpenBLAS library (or leave it unset)" >&2; exit 1 ;;
esac
if [ ! -f "$_ob_lib" ]; then
    echo "install-openblas.sh: fetching the scipy-openblas32 $_ob_version wheel" >&2
    "${PYTHON:-python3}" "$_ob_root/scripts/lib/wheel_files.py" \
        "scipy-openblas32==$_ob_version" '/lib/libscipy_openblas\.so$' "$_ob_dir" >/dev/null
fi
echo "$_ob_lib"

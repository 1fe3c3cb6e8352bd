#!/usr/bin/env bash
# Compiles the stages with `--features cuda` on a machine without a GPU (#28): candle's CUDA
# kernels are built to PTX by nvcc, the Rust code type-checked against cudarc. It runs nothing
# on a GPU (scripts/gpu-check.sh does, where there is one); it catches CUDA-only code that no
# longer compiles.
#
# nvcc comes from PyPI's nvidia-cuda-nvcc wheel (with the runtime headers and CCCL), installed
# into a venv under .cache/cuda-toolkit/ (ignored by git), used only for this build.
#
#   scripts/cuda-compile-check.sh     (CUDA_COMPUTE_CAP: the PTX target, default 80)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CUDA_TOOLKIT_CACHE:-$root/.cache/cuda-toolkit}/13.5"
if [ ! -x "$venv/bin/python" ] || ! ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
    echo "cuda-compile-check.sh: installing nvcc 13.5 from PyPI into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet nvidia-cuda-nvcc==13.5.37 \
        nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6 >&2
fi
cuda="$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13 | head -n 1)"
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
# cudarc 0.19 has bindings up to CUDA 13.4; 13.5's API is a superset of them.
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
# The CCCL headers (cuda/std/...) live beside the toolkit's own include folder.
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$cuda/include/cccl"
echo "cuda-compile-check.sh: $(nvcc --version | tail -1), compute capability $CUDA_COMPUTE_CAP" >&2
cd "$root"
cargo check --workspace --bins --lib --target-dir target/cuda-check \
    --features fmn-sample/cuda,fmn-resteer/cuda,fmn-invert/cuda,fmn-attack/cuda,fmn-patch/cuda
echo "cuda-compile-check.sh: the cuda feature compiles"

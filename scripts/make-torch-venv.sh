#!/usr/bin/env bash
# Creates the Python environment the PyTorch side of the benchmarks runs in (torch, diffusers,
# transformers at the versions BENCHMARKS.md names), outside the repository. Never used by CI
# or by the product.
#   scripts/make-torch-venv.sh [DIR]      (default: $FMN_TORCH_VENV or ~/.cache/fmn/torch-venv)
# Prints the venv's python on stdout when done; an existing venv that imports the three is kept.
set -euo pipefail
dir=${1:-${FMN_TORCH_VENV:-$HOME/.cache/fmn/torch-venv}}
py="$dir/bin/python"
check='import torch, diffusers, transformers'
if [[ -x $py ]] && "$py" -c "$check" 2>/dev/null; then
    echo "$py"
    exit 0
fi
python3 -m venv "$dir" >&2
"$py" -m pip install --quiet --upgrade pip >&2
"$py" -m pip install --quiet torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 >&2
"$py" -c "$check"
echo "$py"

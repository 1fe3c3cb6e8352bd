#!/usr/bin/env bash
# The GPU check (#28), meant to take minutes on a machine with an NVIDIA GPU:
#   1. build the stages and the sd_step bench with `--features cuda` (CARGO_TARGET_DIR=target/cuda);
#   2. parity on CUDA against the CPU, through the real binaries on the toy model: the same
#      seeds sampled on both (largest pixel difference), the same re-steering solve on both
#      (largest patch difference);
#   3. the SD 1.5-size steps at 512² on CUDA (sd_step: forward, re-steering CA-only,
#      inversion), time per step;
#   4. one toy-world forget on CUDA (pipelines/forget.sh bob, DEVICE=cuda);
# then one summary. On a machine without a GPU (or without nvcc) it stops before the build and
# says why (exit 3).
#
#   scripts/gpu-check.sh [OUT_DIR]      (default out/gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu-check}
mkdir -p "$OUT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
BIN=$CARGO_TARGET_DIR/debug
summary=()
say() { summary+=("$*"); printf '%s\n' "$*" >&2; }
finish() {
  printf '\n== gpu-check summary ==\n'
  printf '%s\n' "${summary[@]}"
  exit "${1:-0}"
}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  say "no NVIDIA GPU here (nvidia-smi finds none): stopped before the CUDA build; run this on a GPU machine"
  finish 3
fi
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
if ! command -v nvcc >/dev/null 2>&1; then
  say "nvcc not found: candle's cuda feature compiles its kernels with it; install the CUDA toolkit (or put it on PATH)"
  finish 3
fi
say "nvcc: $(nvcc --version | tail -1)"

t0=$(date +%s)
if ! cargo build --workspace --bins --features fmn-sample/cuda,fmn-resteer/cuda,fmn-invert/cuda,fmn-attack/cuda,fmn-patch/cuda \
      >"$OUT/build.log" 2>&1 \
   || ! cargo build --workspace --benches --profile dev --features fmn-sd/cuda >>"$OUT/build.log" 2>&1; then
  say "build with --features cuda: FAILED (log: $OUT/build.log)"
  finish 1
fi
say "build with --features cuda: ok ($(( $(date +%s) - t0 )) s)"
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH
status=0

# 2. Parity through the binaries: the same prompt and seeds on CPU and CUDA.
for dev in cpu cuda; do
  rm -rf "$OUT/sample-$dev"
  "$BIN/fmn-sample" --device "$dev" --prompt "a photo of bob" --num-images 4 --seed 4242 \
    --out "$OUT/sample-$dev" --quiet || { say "fmn-sample --device $dev: FAILED"; finish 1; }
  "$BIN/fmn-resteer" --device "$dev" --concept bob --kind object --cache-dir "$OUT/cache-$dev" \
    --out "$OUT/patch-$dev.safetensors" --quiet || { say "fmn-resteer --device $dev: FAILED"; finish 1; }
done
python3 scripts/lib/compare_outputs.py "$OUT/sample-cpu" "$OUT/sample-cuda" \
  "$OUT/patch-cpu.safetensors" "$OUT/patch-cuda.safetensors" || status=1
[ $status = 0 ] && say "parity: ok (see above)" || say "parity: FAILED (see above)"

# 3. SD 1.5-size steps at 512² on CUDA.
for mode in forward ca ti; do
  bench=$(ls "$CARGO_TARGET_DIR"/debug/deps/sd_step-* 2>/dev/null | grep -v '\.d$' | head -1)
  if [ -z "$bench" ]; then say "sd_step bench binary not found"; status=1; break; fi
  if line=$("$bench" --size 512 --mode "$mode" --iters 3 --device cuda 2>&1 | tail -1); then
    say "sd_step 512² $mode on CUDA: $line"
  else
    say "sd_step 512² $mode on CUDA: FAILED ($line)"; status=1
  fi
done

# 4. One toy-world forget on CUDA.
t0=$(date +%s)
[ -f "$OUT/images-bob/manifest.json" ] ||
  "$BIN/fmn-toy" render --out "$OUT/images-bob" --count 8 --seed 77 --only bob --quiet
if BIN=$BIN DEVICE=cuda pipelines/forget.sh bob object "$OUT/images-bob" "$OUT/forget-bob" \
     >"$OUT/forget.log" 2>&1; then
  say "toy forget on CUDA ($(( $(date +%s) - t0 )) s): $(grep '^bob:' "$OUT/forget.log" | tail -1)"
else
  say "toy forget on CUDA: FAILED (log: $OUT/forget.log)"; status=1
fi
finish $status

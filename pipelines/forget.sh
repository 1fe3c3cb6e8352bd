#!/usr/bin/env bash
# Forget one concept end to end: segment -> invert -> re-steer -> attack the patch -> sample
# before/after -> eval (with the attack's success rate).
# Every step writes a file (or folder) under OUT and is skipped when that output exists, so a
# rerun redoes only what was removed (pipelines/Makefile does the same with make's timestamps).
#
#   pipelines/forget.sh CONCEPT KIND IMAGES_DIR [OUT_DIR]
#
# Environment (defaults in brackets):
#   MODEL          diffusers model folder [data/toy-model]
#   SEGMENT        fmn-segment preset for the masks, or "none" [toy]
#   USE_TI         1: invert the concept first and re-steer its learned tokens [1]
#   INVERT_CONFIG  [configs/invert/toy.yaml]
#   RESTEER_CONFIG fmn-resteer --config; empty: its built-in defaults []
#   PROMPTS        prompts sampled before/after [configs/eval/toy-prompts.txt]
#   SUITE          fmn-eval suite [configs/eval/toy.yaml]     JUDGE  fmn-eval judge [toy]
#   SEEDS          images per prompt [8]          SAMPLE_STEPS  denoising steps [25]
#   ATTACK         1: attack the patch with fmn-attack (concept inversion, prompt search) [1]
#   ATTACK_STEPS   inversion steps per attack [500]
#   ATTACK_EXPECT  what the judge must see to count the concept, ATTRIBUTE=LABEL
#                  [inferred from the concept's name with the toy judge]
#   BIN            folder of the fmn binaries [target/debug]
#   DEVICE         --device of the model stages: cpu, cuda, cuda:N [cpu]
# Exit status: that of the first failing stage (each stage prints its error on stderr).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,24p' "$0" >&2
  exit 2
fi
CONCEPT=$1 KIND=$2 IMAGES=$3 OUT=${4:-out/forget-$1}
MODEL=${MODEL:-data/toy-model}
SEGMENT=${SEGMENT:-toy}
USE_TI=${USE_TI:-1}
INVERT_CONFIG=${INVERT_CONFIG:-configs/invert/toy.yaml}
RESTEER_CONFIG=${RESTEER_CONFIG:-}
PROMPTS=${PROMPTS:-configs/eval/toy-prompts.txt}
SUITE=${SUITE:-configs/eval/toy.yaml}
JUDGE=${JUDGE:-toy}
SEEDS=${SEEDS:-8}
SAMPLE_STEPS=${SAMPLE_STEPS:-25}
ATTACK=${ATTACK:-1}
ATTACK_STEPS=${ATTACK_STEPS:-500}
ATTACK_EXPECT=${ATTACK_EXPECT:-}
BIN=${BIN:-target/debug}
DEVICE=${DEVICE:-cpu}
mkdir -p "$OUT"
step() { printf '== %s\n' "$*" >&2; }

masks=()
if [ "$SEGMENT" != none ]; then
  if [ ! -f "$OUT/masks/manifest.json" ]; then
    step "segment $IMAGES -> $OUT/masks"
    "$BIN/fmn-segment" --segmenter "$SEGMENT" --images "$IMAGES" --out "$OUT/masks" >/dev/null
  fi
  masks=(--masks "$OUT/masks")
fi

embedding=()
if [ "$USE_TI" = 1 ]; then
  if [ ! -f "$OUT/embedding.safetensors" ]; then
    step "invert -> $OUT/embedding.safetensors"
    "$BIN/fmn-invert" --model "$MODEL" --device "$DEVICE" --config "$INVERT_CONFIG" --kind "$KIND" \
      --images "$IMAGES" "${masks[@]}" --checkpoint-every 100 --resume \
      --out "$OUT/embedding.safetensors"
  fi
  embedding=(--embedding "$OUT/embedding.safetensors")
fi

if [ ! -f "$OUT/patch.safetensors" ]; then
  step "re-steer -> $OUT/patch.safetensors"
  resteer_config=()
  [ -z "$RESTEER_CONFIG" ] || resteer_config=(--config "$RESTEER_CONFIG")
  "$BIN/fmn-resteer" --model "$MODEL" --device "$DEVICE" "${resteer_config[@]}" --concept "$CONCEPT" \
    --kind "$KIND" --images "$IMAGES" "${masks[@]}" "${embedding[@]}" \
    --out "$OUT/patch.safetensors"
fi

attack=()
if [ "$ATTACK" = 1 ]; then
  if [ ! -f "$OUT/attack/attack.json" ]; then
    step "attack $OUT/patch.safetensors -> $OUT/attack"
    attack_kind=$KIND
    [ "$KIND" != identity ] || attack_kind=object
    expect=()
    [ -z "$ATTACK_EXPECT" ] || expect=(--expect "$ATTACK_EXPECT")
    "$BIN/fmn-attack" --model "$MODEL" --device "$DEVICE" --patch "$OUT/patch.safetensors" --concept "$CONCEPT" \
      --kind "$attack_kind" --images "$IMAGES" "${masks[@]}" --invert-config "$INVERT_CONFIG" \
      --steps "$ATTACK_STEPS" --judge "$JUDGE" "${expect[@]}" --resume --out "$OUT/attack"
  fi
  attack=(--attack "$OUT/attack")
fi

sample() { # OUT_DIR [fmn-sample flags...]
  local dir=$1; shift
  [ -f "$dir/manifest.json" ] && return 0
  step "sample -> $dir"
  "$BIN/fmn-sample" --model "$MODEL" --device "$DEVICE" --prompt-file "$PROMPTS" --num-images "$SEEDS" \
    --steps "$SAMPLE_STEPS" --seed 4242 --save-attention "$dir.attention.safetensors" \
    --attention-steps "0,$((SAMPLE_STEPS / 2)),$((SAMPLE_STEPS - 1))" \
    --out "$dir" "$@"
}
sample "$OUT/before"
sample "$OUT/after" --patch "$OUT/patch.safetensors"

step "evaluate -> $OUT/report"
"$BIN/fmn-eval" --before "$OUT/before" --after "$OUT/after" \
  --before-attention "$OUT/before.attention.safetensors" \
  --after-attention "$OUT/after.attention.safetensors" \
  --suite "$SUITE" --judge "$JUDGE" "${attack[@]}" --out "$OUT/report"
echo "report: $OUT/report/report.html"

#!/usr/bin/env bash
# Forget `circle` (object), `stripes` (style) and `bob` (character) on the toy model, each alone
# then all three merged into one patch (`all`) and trained together in one run (`joint`), and
# evaluate every patch with the toy judge.
# Prints one line per (patch, concept): Acc_e before -> after and Acc_s before -> after; then per
# patch the accuracy on every suite prompt naming none of its concepts (preservation) and on those
# naming one, and the three prompts that lost most.
#
#   pipelines/measure-resteer.sh [RESTEER_CONFIG] [OUT_DIR]
#
# Environment: MODEL (default data/toy-model), SEEDS (images per prompt, default 8),
# BIN (folder of the fmn binaries, default target/debug; build them first with cargo build).
set -euo pipefail
CONFIG=${1:-configs/resteer/toy.yaml}
OUT=${2:-out/measure-resteer}
MODEL=${MODEL:-data/toy-model}
SEEDS=${SEEDS:-8}
BIN=${BIN:-target/debug}
mkdir -p "$OUT"

sample() { # OUT_DIR [fmn-sample flags...]
  local dir=$1; shift
  [ -f "$dir/manifest.json" ] && return 0
  "$BIN/fmn-sample" --model "$MODEL" --prompt-file configs/eval/toy-prompts.txt \
    --num-images "$SEEDS" --seed 4242 --save-attention "$dir.attention.safetensors" \
    --attention-steps 0,12,24 --out "$dir" --quiet "$@"
}

sample "$OUT/before"
patches=()
for spec in circle:object stripes:style bob:object; do
  name=${spec%%:*}; kind=${spec##*:}
  [ -d "$OUT/images/$name" ] || "$BIN/fmn-toy" render --out "$OUT/images/$name" --count 8 --seed 77 --only "$name" >/dev/null
  [ -f "$OUT/$name.safetensors" ] || "$BIN/fmn-resteer" --model "$MODEL" --config "$CONFIG" \
    --concept "$name" --kind "$kind" --images "$OUT/images/$name" --masks "$OUT/images/$name/masks" \
    --out "$OUT/$name.safetensors" --json --quiet > "$OUT/$name.resteer.json"
  patches+=("$OUT/$name.safetensors")
done
[ -f "$OUT/all.safetensors" ] || "$BIN/fmn-patch" merge "${patches[@]}" --out "$OUT/all.safetensors" >/dev/null
# The same three concepts trained together in one run (the config's multi_concept list).
if [ ! -f "$OUT/joint.safetensors" ]; then
  { cat "$CONFIG"; echo "multi_concept:"
    for spec in circle:object stripes:style bob:object; do
      printf '  - {name: %s, kind: %s, images: "%s", masks: "%s"}\n' "${spec%%:*}" "${spec##*:}" \
        "$OUT/images/${spec%%:*}" "$OUT/images/${spec%%:*}/masks"
    done; } > "$OUT/joint.yaml"
  "$BIN/fmn-resteer" --model "$MODEL" --config "$OUT/joint.yaml" --out "$OUT/joint.safetensors" \
    --json --quiet > "$OUT/joint.resteer.json"
fi

for p in circle stripes bob all joint; do
  sample "$OUT/after-$p" --patch "$OUT/$p.safetensors"
  "$BIN/fmn-eval" --before "$OUT/before" --after "$OUT/after-$p" \
    --before-attention "$OUT/before.attention.safetensors" --after-attention "$OUT/after-$p.attention.safetensors" \
    --suite configs/eval/toy.yaml --judge toy --out "$OUT/report-$p" --json --quiet > "$OUT/metrics-$p.json"
  python3 - "$OUT/metrics-$p.json" "$p" "$OUT/$p.resteer.json" <<'PY'
import json, sys, os
m = json.load(open(sys.argv[1]))
secs = ""
if os.path.exists(sys.argv[3]):
    secs = " (re-steering %.1f s)" % json.load(open(sys.argv[3]))["report"]["seconds"]
for c in m["concepts"]:
    f = lambda k: "%s->%s" % tuple("-" if c.get(k) is None or c[k].get(x) is None else "%.0f%%" % (100 * c[k][x]) for x in ("before", "after"))
    print("patch %-7s concept %-7s Acc_e %-10s Acc_g %-10s Acc_s %-10s%s" % (sys.argv[2], c["concept"], f("acc_e"), f("acc_g"), f("acc_s"), secs))
PY
  names=$p; case $p in all | joint) names="circle stripes bob" ;; esac
  # shellcheck disable=SC2086
  echo "patch $p: $(python3 pipelines/lib/preservation.py "$OUT/report-$p/results.json" $names)"
done

#!/usr/bin/env bash
# The fmn-invert acceptance measurement on the toy model (numbers in
# BENCHMARKS.md#textual-inversion-on-the-toy-model):
# invert `bob` and `triangle` from 8 rendered images each into new tokens (never the word),
# judge "a photo of <t1> <t2>" over SEEDS seeds; then re-steer away from bob's learned tokens
# and judge "a photo of bob" before and after.
#
#   pipelines/measure-invert.sh [OUT_DIR]
#
# Environment: MODEL (default data/toy-model), SEEDS (default 16), BIN (default target/debug),
# INVERT_CONFIG (configs/invert/toy.yaml), RESTEER_CONFIG (configs/resteer/toy.yaml).
# Needs python3 to count the judge's verdicts.
set -euo pipefail
OUT=${1:-out/measure-invert}
MODEL=${MODEL:-data/toy-model}
SEEDS=${SEEDS:-16}
BIN=${BIN:-target/debug}
INVERT_CONFIG=${INVERT_CONFIG:-configs/invert/toy.yaml}
RESTEER_CONFIG=${RESTEER_CONFIG:-configs/resteer/toy.yaml}
mkdir -p "$OUT"

rate() { # FOLDER FIELD LABEL -> "k/n (p %)"
  "$BIN/fmn-toy" judge --images "$1" --json | python3 -c '
import json, sys
imgs = json.load(sys.stdin)["images"]
k = sum(1 for i in imgs if i["figure"] and i[sys.argv[1]]["label"] == sys.argv[2])
print("%d/%d (%.0f %%)" % (k, len(imgs), 100.0 * k / len(imgs)))' "$2" "$3"
}

sample() { # OUT_DIR PROMPT [flags...]
  local dir=$1 prompt=$2; shift 2
  [ -f "$dir/manifest.json" ] || "$BIN/fmn-sample" --model "$MODEL" --prompt "$prompt" \
    --num-images "$SEEDS" --seed 4242 --quiet --out "$dir" "$@"
}

# concept:judge field:a prompt with the word, for reference
for spec in "bob:character:a photo of bob" "triangle:object:a photo of a red triangle"; do
  IFS=: read -r c field word_prompt <<< "$spec"
  [ -d "$OUT/images/$c" ] || "$BIN/fmn-toy" render --out "$OUT/images/$c" --count 8 --seed 77 --only "$c" --quiet >/dev/null
  if [ ! -f "$OUT/$c.safetensors" ]; then
    "$BIN/fmn-invert" --model "$MODEL" --config "$INVERT_CONFIG" --images "$OUT/images/$c" \
      --masks "$OUT/images/$c/masks" --quiet --json --out "$OUT/$c.safetensors" > "$OUT/$c.invert.json"
  fi
  secs=$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["report"]["seconds"])' "$OUT/$c.invert.json")
  sample "$OUT/tokens-$c" "a photo of <t1> <t2>" --embedding "$OUT/$c.safetensors"
  sample "$OUT/word-$c" "$word_prompt"
  echo "invert $c: \"a photo of <t1> <t2>\" judged $c $(rate "$OUT/tokens-$c" "$field" "$c") [\"$word_prompt\": $(rate "$OUT/word-$c" "$field" "$c")]; inversion ${secs} s"
done

if [ ! -f "$OUT/bob-ti.patch.safetensors" ]; then
  "$BIN/fmn-resteer" --model "$MODEL" --config "$RESTEER_CONFIG" --concept bob --kind object \
    --images "$OUT/images/bob" --masks "$OUT/images/bob/masks" --embedding "$OUT/bob.safetensors" \
    --quiet --out "$OUT/bob-ti.patch.safetensors"
fi
sample "$OUT/after-bob-word" "a photo of bob" --patch "$OUT/bob-ti.patch.safetensors"
sample "$OUT/after-bob-tokens" "a photo of <t1> <t2>" --patch "$OUT/bob-ti.patch.safetensors" --embedding "$OUT/bob.safetensors"
sample "$OUT/yellow-circle" "a photo of a yellow circle"
sample "$OUT/after-yellow-circle" "a photo of a yellow circle" --patch "$OUT/bob-ti.patch.safetensors"
echo "re-steer from bob's tokens: \"a photo of bob\" judged bob $(rate "$OUT/word-bob" character bob) -> $(rate "$OUT/after-bob-word" character bob)"
echo "                            \"a photo of <t1> <t2>\" judged bob $(rate "$OUT/tokens-bob" character bob) -> $(rate "$OUT/after-bob-tokens" character bob)"
echo "                            \"a photo of a yellow circle\" judged circle $(rate "$OUT/yellow-circle" object circle) -> $(rate "$OUT/after-yellow-circle" object circle)"

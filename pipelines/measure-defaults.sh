#!/usr/bin/env bash
# fmn-resteer with no config and no list, on held-out phrasings (pipelines/heldout/toy-prompts.txt:
# templates that neither the re-steering defaults nor the model's preserve.txt use): each of bob,
# kiki, circle and stripes forgotten alone with the defaults (the solve alone) and with the
# solve followed by the paper's 35 attention steps (--steps 35), five concepts at once (both
# ways), and the paper's settings (--preset original) on bob.
# Prints per patch the forgotten concepts' judged rates before -> after and every other
# concept's, over the prompts that name no forgotten concept (pipelines/lib/concept_rates.py).
#
#   pipelines/measure-defaults.sh [OUT_DIR]
#
# Environment: MODEL (default data/toy-model), SEEDS (images per prompt, default 8), SEED (the
# first image's seed, default 4242; the before-images are sampled with it too),
# BIN (default target/debug), ONLY (space-separated patch names to run; default all),
# SETTINGS (a YAML file of fmn-resteer keys added to every run but the probes and the preset:
# a setting measured before it becomes a default).
set -euo pipefail
OUT=${1:-out/measure-defaults}
MODEL=${MODEL:-data/toy-model}
SEEDS=${SEEDS:-8}
SEED=${SEED:-4242}
BIN=${BIN:-target/debug}
PROMPTS=pipelines/heldout/toy-prompts.txt
export FMN_CACHE_DIR=${FMN_CACHE_DIR:-$OUT/cache}
mkdir -p "$OUT"

sample() { # OUT_DIR [fmn-sample flags...]
  local dir=$1; shift
  if [ ! -f "$dir/manifest.json" ]; then
    "$BIN/fmn-sample" --model "$MODEL" --prompt-file "$PROMPTS" --num-images "$SEEDS" --seed "$SEED" \
      --out "$dir" --quiet "$@"
  fi
  [ -f "$dir.judge.json" ] || "$BIN/fmn-toy" judge --images "$dir" --json --quiet > "$dir.judge.json"
}
images() { # NAME
  [ -d "$OUT/images/$1" ] || "$BIN/fmn-toy" render --out "$OUT/images/$1" --count 8 --seed 77 --only "$1" >/dev/null
}
patch() { # NAME "CONCEPT:KIND ..." [fmn-resteer flags...]
  local name=$1 specs=$2; shift 2
  [ -f "$OUT/$name.safetensors" ] && return 0
  local args=()
  if [ "$(wc -w <<<"$specs")" -eq 1 ]; then
    images "${specs%%:*}"
    args=(--concept "${specs%%:*}" --kind "${specs##*:}" --images "$OUT/images/${specs%%:*}")
    [ -z "${SETTINGS:-}" ] || [[ " $* " == *" --config "* || " $* " == *" --preset "* ]] || args+=(--config "$SETTINGS")
  else
    { echo "multi_concept:"; for s in $specs; do images "${s%%:*}"
        printf '  - {name: %s, kind: %s, images: "%s"}\n' "${s%%:*}" "${s##*:}" "$OUT/images/${s%%:*}"; done
      [ -z "${SETTINGS:-}" ] || cat "$SETTINGS"
    } > "$OUT/$name.yaml"
    args=(--config "$OUT/$name.yaml")
  fi
  "$BIN/fmn-resteer" --model "$MODEL" "${args[@]}" "$@" --out "$OUT/$name.safetensors" --json --quiet \
    > "$OUT/$name.resteer.json"
}
report() { # NAME "CONCEPT:KIND ..."
  local names=()
  for s in $2; do names+=("${s%%:*}"); done
  sample "$OUT/after-$1" --patch "$OUT/$1.safetensors"
  printf '%-16s %5.1f s  ' "$1" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["report"]["seconds"])' "$OUT/$1.resteer.json")"
  python3 pipelines/lib/concept_rates.py "$OUT/before" "$OUT/before.judge.json" "$OUT/after-$1" "$OUT/after-$1.judge.json" "${names[@]}"
}
wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

sample "$OUT/before"
for spec in bob:object stripes:style circle:object kiki:object square:object; do
  n=${spec%%:*}
  if wanted "$n"; then patch "$n" "$spec"; report "$n" "$spec"; fi
  if wanted "$n-steps"; then patch "$n-steps" "$spec" --steps 35; report "$n-steps" "$spec"; fi
done
JOINT="bob:object kiki:object circle:object square:object stripes:style"
if wanted joint; then patch joint "$JOINT"; report joint "$JOINT"; fi
if wanted joint-steps; then patch joint-steps "$JOINT" --steps 35; report joint-steps "$JOINT"; fi
# The probes that chose the defaults on circle (BENCHMARKS.md#re-steering-defaults), each run only
# when named in ONLY: the target at the anchor and the kind's templates alone (the old defaults),
# plus the listed prompts, plus a push of 1 or 0.5, all at preserve_weight 1.
probe() { # NAME YAML
  wanted "$1" && [[ " ${ONLY:-} " == *" $1 "* ]] || return 0
  printf '%b' "$2" > "$OUT/$1.yaml"
  patch "$1" circle:object --config "$OUT/$1.yaml"; report "$1" circle:object
}
probe circle-at-anchor 'anchor_push: 0.0\nlisted_concept_prompts: false\npreserve_weight: 1.0\n'
probe circle-listed 'anchor_push: 0.0\npreserve_weight: 1.0\n'
probe circle-push1 'preserve_weight: 1.0\n'
probe circle-push05 'anchor_push: 0.5\npreserve_weight: 1.0\n'
if wanted bob-original; then patch bob-original bob:object --preset original; report bob-original bob:object; fi

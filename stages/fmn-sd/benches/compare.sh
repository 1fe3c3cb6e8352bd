#!/usr/bin/env bash
# fmn against PyTorch, side by side on this machine: for each SD 1.5-size training step (sd_step's
# `ca`, `all`, `ti` at 256² and 512²) runs fmn's bench, then the PyTorch reference
# (pytorch_step.py), one process per row and side so that each peak RSS is its own, and prints a
# Markdown table with time and memory ratios (fmn / PyTorch). Never part of CI.
#   stages/fmn-sd/benches/compare.sh [--sizes "256 512"] [--modes "ca all ti"] [--iters N]
#   stages/fmn-sd/benches/compare.sh --ops     (each op of the 512² step alone: sd_ops against
#                                               pytorch_sd_ops.py)
# The PyTorch venv comes from scripts/make-torch-venv.sh (created on the first run; set
# FMN_TORCH_VENV to use another). Raw lines go to stderr as they come.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
sizes="256 512" modes="ca all ti" iters=2 ops=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --sizes) sizes=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        --ops) ops=1; shift ;;
        *) echo "compare.sh: unknown argument '$1' (expected --sizes, --modes, --iters or --ops)" >&2; exit 1 ;;
    esac
done
py=$("$root/scripts/make-torch-venv.sh")
cd "$root"
cargo bench -p fmn-sd --profile dev --bench sd_step --bench sd_ops --no-run -q 2>/dev/null
blas="${FMN_BLAS:-none set (the system libopenblas.so.0 if any, else the gemm crate)}"

source "$root/stages/fmn-sd/benches/bench_lines.sh"
if [[ $ops == 1 ]]; then
    ours=$(cargo bench -q -p fmn-sd --profile dev --bench sd_ops -- --iters "$iters" 2>/dev/null | grep '^fmn op=')
    theirs=$("$py" stages/fmn-sd/benches/pytorch_sd_ops.py --iters "$iters" 2>/dev/null | grep '^pytorch op=')
    printf '%s\n%s\n' "$ours" "$theirs" >&2
    echo "| op (512², first level) | fmn forward | PyTorch forward | ratio | fmn fwd+bwd | PyTorch fwd+bwd | ratio |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    while read -r line; do
        op=$(sed -E 's/.*op=([^ ]+).*/\1/' <<<"$line")
        other=$(grep " op=$op " <<<"$theirs" || true)
        [[ -n $other ]] || continue
        awk -v op="$op" -v of="$(field forward "$line")" -v ob="$(field forward_backward "$line")" \
            -v tf="$(field forward "$other")" -v tb="$(field forward_backward "$other")" 'BEGIN {
            printf "| %s | %.4f s | %.4f s | **%.2f** | %.4f s | %.4f s | **%.2f** |\n", op, of, tf, of / tf, ob, tb, ob / tb }'
    done <<<"$ours"
    echo "(best of $iters; products: $blas; $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
    exit 0
fi
echo "| size | step | fmn best (mean) | PyTorch best (mean) | time ratio | fmn peak | PyTorch peak | memory ratio |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for size in $sizes; do
    for mode in $modes; do
        ours=$(cargo bench -q -p fmn-sd --profile dev --bench sd_step -- --size "$size" --mode "$mode" --iters "$iters" 2>/dev/null | grep '^sd15-unet')
        echo "$ours" >&2
        theirs=$(pytorch_row "$size" "$mode" "$iters")
        echo "$theirs" >&2
        ob=$(field best "$ours") om=$(field mean "$ours") op=$(field peak_rss "$ours")
        tb=$(field best "$theirs") tm=$(field mean "$theirs") tp=$(field peak_rss "$theirs")
        awk -v s="$size" -v m="$mode" -v ob="$ob" -v om="$om" -v op="$op" -v tb="$tb" -v tm="$tm" -v tp="$tp" 'BEGIN {
            printf "| %s² | %s | %.2f s (%.2f) | %.2f s (%.2f) | **%.2f** | %.0f MiB | %.0f MiB | **%.2f** |\n",
                s, m, ob, om, tb, tm, ob / tb, op, tp, op / tp }'
    done
done
echo "(threads: fmn $(nproc), PyTorch its default; products: $blas; $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg))"

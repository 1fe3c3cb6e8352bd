#!/usr/bin/env bash
# fmn against PyTorch, side by side on this machine: for each SD 1.5-size training step (sd_step's
# `ca`, `all`, `ti` at 256² and 512²) runs fmn's bench, then the PyTorch reference
# (pytorch_step.py), one process per row and side so that each peak RSS is its own, and prints a
# Markdown table with time and memory ratios (fmn / PyTorch). Never part of CI.
#   stages/fmn-sd/benches/compare.sh [--sizes "256 512"] [--modes "ca all ti"] [--iters N]
# The PyTorch venv comes from scripts/make-torch-venv.sh (created on the first run; set
# FMN_TORCH_VENV to use another). Raw lines go to stderr as they come.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
sizes="256 512" modes="ca all ti" iters=2
while [[ $# -gt 0 ]]; do
    case $1 in
        --sizes) sizes=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        *) echo "compare.sh: unknown argument '$1' (expected --sizes, --modes or --iters)" >&2; exit 1 ;;
    esac
done
py=$("$root/scripts/make-torch-venv.sh")
cd "$root"
cargo bench -p fmn-sd --profile dev --bench sd_step --no-run -q 2>/dev/null

field() { # field NAME LINE -> the number after NAME= (units stripped)
    sed -E "s/.*[ ]$1=([0-9.]+).*/\1/" <<<"$2"
}
echo "| size | step | fmn best (mean) | PyTorch best (mean) | time ratio | fmn peak | PyTorch peak | memory ratio |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for size in $sizes; do
    for mode in $modes; do
        ours=$(cargo bench -q -p fmn-sd --profile dev --bench sd_step -- --size "$size" --mode "$mode" --iters "$iters" 2>/dev/null | grep '^sd15-unet')
        echo "$ours" >&2
        theirs=$("$py" stages/fmn-sd/benches/pytorch_step.py --size "$size" --mode "$mode" --iters "$iters" 2>/dev/null | grep '^pytorch')
        echo "$theirs" >&2
        ob=$(field best "$ours") om=$(field mean "$ours") op=$(field peak_rss "$ours")
        tb=$(field best "$theirs") tm=$(field mean "$theirs") tp=$(field peak_rss "$theirs")
        awk -v s="$size" -v m="$mode" -v ob="$ob" -v om="$om" -v op="$op" -v tb="$tb" -v tm="$tm" -v tp="$tp" 'BEGIN {
            printf "| %s² | %s | %.2f s (%.2f) | %.2f s (%.2f) | **%.2f** | %.0f MiB | %.0f MiB | **%.2f** |\n",
                s, m, ob, om, tb, tm, ob / tb, op, tp, op / tp }'
    done
done
echo "(threads: fmn $(nproc), PyTorch its default; $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg))"

#!/usr/bin/env bash
# Where each SD 1.5-size training step's time goes, and what bounds it against PyTorch: for each
# row of compare.sh (sd_step's `ca`, `all`, `ti` at 256² and 512²) runs fmn's bench under
# `perf record` from its second iteration on (the steady state), sorts the samples into matrix
# products, threads waiting, attention softmax, norms, element-wise ops, memory fill/copy and the
# rest, runs the PyTorch reference for the same row, and prints a Markdown table:
#   - the products' CPU time per step spread over every thread: the step's time if everything
#     else were free, and that time against PyTorch's best (the time ratio's floor while products
#     run at the rate they run now);
#   - the bytes the step must hold in f32 (weights, plus gradients of the trainable ones) against
#     0.6× PyTorch's peak (the memory goal), and what is left for activations.
#   stages/fmn-sd/benches/profile.sh [--sizes "256 512"] [--modes "ca all ti"] [--iters N]
# Needs `perf` (linux-perf) with user-space sampling allowed (perf_event_paranoid ≤ 2) and the
# PyTorch venv of scripts/make-torch-venv.sh. Never part of CI.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
sizes="256 512" modes="ca all ti" iters=3
while [[ $# -gt 0 ]]; do
    case $1 in
        --sizes) sizes=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        *) echo "profile.sh: unknown argument '$1' (expected --sizes, --modes or --iters)" >&2; exit 1 ;;
    esac
done
if (( iters < 2 )); then
    echo "profile.sh: --iters must be at least 2 (the first iteration is not profiled)" >&2
    exit 1
fi
command -v perf >/dev/null || { echo "profile.sh: needs perf (apt install linux-perf)" >&2; exit 1; }
py=$("$root/scripts/make-torch-venv.sh")
cd "$root"
bin=$(cargo bench -p fmn-sd --profile dev --bench sd_step --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*sd_step[^"]*"' | tail -1 | cut -d'"' -f4)
[[ -x $bin ]] || { echo "profile.sh: could not build the sd_step bench" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
threads=$(nproc)
# One sample per 5 ms of a thread's CPU time: samples × 5 ms is CPU time, whatever the clock rate.
period_ns=5000000

source "$root/stages/fmn-sd/benches/bench_lines.sh"
# perf report lines "samples dso symbol" -> "products waiting softmax norms elementwise memory other total" sample counts.
buckets() {
    awk '{
        n = $1; dso = $2; sym = ""; for (i = 4; i <= NF; i++) sym = sym " " $i
        # Threads waiting: candle pool workers spinning for work (their loop is inlined into the
        # thread entry) and the caller spinning until they finish (BarrierGuard), OpenBLAS idling.
        if (sym ~ /BarrierGuard|__rust_begin_short_backtrace|sched_yield|blas_thread_server|finish_task_switch/) b["waiting"] += n
        else if (dso ~ /openblas/ || sym ~ /gemm|matmul/) b["products"] += n
        else if (sym ~ /softmax|vexp|exp_f32/) b["softmax"] += n
        else if (sym ~ /norm/) b["norms"] += n
        else if (sym ~ /memset|memcpy|memmove|clear_page|copy_page/) b["memory"] += n
        else if (sym ~ /candle_core|binary_map|unary_map|vec_|gelu|erf|cpu_backend/) b["elementwise"] += n
        else b["other"] += n
        total += n
    } END {
        printf "%d %d %d %d %d %d %d %d\n", b["products"], b["waiting"], b["softmax"], b["norms"], b["elementwise"], b["memory"], b["other"], total
    }'
}

echo "| size | step | fmn best | PyTorch best | time ratio | products | waiting | softmax | norms | element-wise | fill/copy | other | products alone | floor ratio | f32 weights (+ grads) | 0.6× PyTorch peak | left for activations |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for size in $sizes; do
    for mode in $modes; do
        fifo="$work/ctl"
        rm -f "$fifo"
        mkfifo "$fifo"
        ours=$(FMN_PERF_CTL="$fifo" perf record -q -e task-clock -c "$period_ns" -D -1 --control "fifo:$fifo" \
            -o "$work/perf.data" -- "$bin" --size "$size" --mode "$mode" --iters "$iters" 2>/dev/null | grep '^sd15-unet')
        echo "$ours" >&2
        read -r prod wait soft norms elem mem other total < <(
            perf report -i "$work/perf.data" --stdio -q --no-children --sort dso,sym -F sample,dso,sym 2>/dev/null |
                buckets)
        theirs=$(pytorch_row "$size" "$mode" "$iters")
        echo "$theirs" >&2
        awk -v s="$size" -v m="$mode" -v ob="$(field best "$ours")" -v tb="$(field best "$theirs")" \
            -v params="$(field params "$ours")" -v trainable="$(field trainable "$ours")" -v text="$(field text_params "$ours")" \
            -v tp="$(field peak_rss "$theirs")" -v iters="$iters" -v threads="$threads" -v period="$period_ns" \
            -v prod="$prod" -v wait="$wait" -v soft="$soft" -v norms="$norms" -v elem="$elem" -v mem="$mem" -v other="$other" -v total="$total" 'BEGIN {
            if (total == 0) { printf "| %s² | %s | no samples (is perf allowed to sample this user?) |\n", s, m; exit }
            pct = 100 / total
            alone = prod * period / 1e9 / (iters - 1) / threads
            held = (params + trainable + text) * 1e6 * 4 / 1048576
            goal = 0.6 * tp
            printf "| %s² | %s | %.2f s | %.2f s | **%.2f** | %.0f %% | %.0f %% | %.0f %% | %.0f %% | %.0f %% | %.0f %% | %.0f %% | %.2f s | **%.2f** | %.0f MiB | %.0f MiB | %.0f MiB |\n",
                s, m, ob, tb, ob / tb, prod * pct, wait * pct, soft * pct, norms * pct, elem * pct, mem * pct, other * pct,
                alone, alone / tb, held, goal, goal - held }'
    done
done
echo "(fmn: $threads threads, products: ${FMN_BLAS:-none set}; PyTorch its default threads; sampled from each fmn run's second iteration on, $iters iterations; $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg))"

//! Thread settings for tensor workloads on the CPU.

/// candle's own element-wise ops and reductions run on the calling thread
/// (`CANDLE_NUM_THREADS=1`) unless the user set `CANDLE_NUM_THREADS`; the matrix products,
/// convolutions, attention and norms — most of a step — keep every core through fmn-ops' rayon
/// pool (`RAYON_NUM_THREADS`). candle 0.11's own pool keeps its worker spinning for about a
/// millisecond after each op and its caller spinning until the worker is done; beside rayon's
/// threads on the same cores that spinning took CPU from the products (an SD 1.5-size step: 13 %
/// of its CPU samples), and two runs at once on 2 cores each took 1.7–2× as long
/// (BENCHMARKS.md#threads-candles-pool-off-2026-12-07).
pub fn tune_for_tensors() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Read once, when candle's pool first starts (the first op), which is after this.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

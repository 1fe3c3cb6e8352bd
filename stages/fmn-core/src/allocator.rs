//! Allocator settings for tensor workloads.
//!
//! Training allocates and frees many tensors of a few MB per step. glibc serves each of them
//! with a fresh `mmap` and returns it on free, so every step pays page faults for memory it just
//! gave back: on the toy model's UNet step this was 21 s of 60 s CPU time (`sys` in `time`;
//! BENCHMARKS.md#custom-cpu-ops-what-each-bought).
//! Keeping such blocks in the heap removes that.

/// Serve every block from the heap, never by `mmap`, and never give freed heap memory back to
/// the system (the process keeps its peak, which the memory pre-flight checks, until it
/// exits). A raised mmap threshold is not enough at SD sizes: glibc caps it at 32 MiB, and a
/// 512² step's feed-forward activations (42 MB) and convolution patches (47 MB) are larger, so
/// each step page-faulted them in afresh (an SD 1.5 inversion step at 512²: 18.1 s with mmap
/// above 32 MiB, 15.3 s without, the same peak; BENCHMARKS.md#faster-than-pytorch-side-by-side).
/// Keeping at most 1 GiB was not enough either: encoding the preservation lists with SD 1.5's
/// text encoder gave back and faulted in again 3.8 M pages in 30 s (the kernel zeroing them
/// was 30 % of the run), 1.2 M without trimming (BENCHMARKS.md#solve-only-forget-at-sd-15-size).
/// Does nothing off glibc.
pub fn tune_for_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// One malloc arena for every thread. Threads other than the main one otherwise get arenas of
/// their own, whose heaps (64 MiB each) cannot keep the blocks `tune_for_tensors` keeps: with
/// `fmn-toy train`'s batch split across threads the page faults came back (system time 3.4 s →
/// 15 s over a short run; the shipped split's figures:
/// BENCHMARKS.md#toy-training-batch-split-across-threads). Not the default: with one training
/// thread and candle's matrix products spread over the cores it was seen to cost time (no
/// figure was recorded). Does nothing off glibc.
pub fn share_one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

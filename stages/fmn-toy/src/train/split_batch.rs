//! One optimiser step's gradients computed over parts of the batch on parallel threads and
//! summed. candle runs its element-wise CPU ops and autograd bookkeeping on the calling
//! thread, so a whole-batch step left the second core idle for about a third of it
//! (`RAYON_NUM_THREADS=1` cost only 1.33×, BENCHMARKS.md#toy-training-batch-split-across-threads). Each part runs in a one-thread
//! rayon pool of its own, so that the parallel loops of fmn-sd's ops in one part never queue
//! behind the other's; `fmn-toy train` also makes candle's matrix products single-threaded
//! when the batch is split (two parts each spreading their products over both cores spun
//! more than they gained: BENCHMARKS.md#toy-training-batch-split-across-threads).
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::ops::Range;

/// The batch rows `0..batch` cut into `parts` contiguous ranges as even as possible (no empty
/// range; fewer ranges when the batch is smaller than `parts`).
fn ranges(batch: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, batch.max(1));
    (0..parts)
        .map(|i| (i * batch / parts)..((i + 1) * batch / parts))
        .filter(|r| !r.is_empty())
        .collect()
}

/// One long-lived one-thread rayon pool per batch part (a fresh thread per step would also
/// start a fresh malloc arena each step: measured 2× the system time).
pub struct PartThreads {
    parts: usize,
    pools: Vec<rayon::ThreadPool>,
}

impl PartThreads {
    /// Threads for `parts` parts (none for a single part: it runs on the caller's thread).
    pub fn new(parts: usize) -> Result<Self> {
        let pools = if parts > 1 {
            (0..parts)
                .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
                .collect::<Result<_, _>>()
                .context("cannot start the batch-part threads")?
        } else {
            Vec::new()
        };
        Ok(Self {
            parts: parts.max(1),
            pools,
        })
    }

    /// `f(range)` for each part of the rows `0..rows` (contiguous, as even as possible; fewer
    /// parts when there are fewer rows), each on its own thread, results in row order (on
    /// the caller's thread when there is one part).
    pub fn map<T, F>(&self, rows: usize, f: F) -> Result<Vec<T>>
    where
        T: Send,
        F: Fn(Range<usize>) -> Result<T> + Sync,
    {
        let ranges = ranges(rows, self.parts);
        if self.pools.is_empty() {
            return ranges.into_iter().map(&f).collect();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .zip(&self.pools)
                .map(|(r, pool)| {
                    let r = r.clone();
                    let f = &f;
                    scope.spawn(move || pool.install(|| f(r)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a batch-part thread panicked")))
                })
                .collect()
        })
    }

    /// Runs `loss_of(range)` for each part of the batch rows `0..batch` on its own thread
    /// (`map`), back-propagates each loss, and returns the gradients of `vars` summed over the
    /// parts (in part order, so the result does not depend on thread timing) with the summed
    /// loss. Each part's loss must already carry its share of the batch's weighting, so that
    /// the sum is the whole batch's loss.
    pub fn summed_grads<F>(
        &self,
        vars: &[(String, Var)],
        batch: usize,
        loss_of: F,
    ) -> Result<(GradStore, f64)>
    where
        F: Fn(Range<usize>) -> Result<Tensor> + Sync,
    {
        let results = self.map(batch, |r| {
            let loss = loss_of(r)?;
            let value = loss.to_scalar::<f32>()? as f64;
            Ok((loss.backward()?, value))
        })?;
        let mut results = results.into_iter();
        let (mut total, mut loss) = results.next().context("no batch rows to train on")?;
        for (grads, value) in results {
            loss += value;
            for (_, var) in vars {
                let t = var.as_tensor();
                if let Some(g) = grads.get(t) {
                    let sum = match total.get(t) {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    };
                    total.insert(t, sum);
                }
            }
        }
        Ok((total, loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn ranges_cover_the_batch_evenly() {
        assert_eq!(ranges(32, 2), vec![0..16, 16..32]);
        assert_eq!(ranges(5, 2), vec![0..2, 2..5]);
        assert_eq!(ranges(1, 2), vec![0..1]);
        assert_eq!(ranges(7, 1), vec![0..7]);
    }

    #[test]
    fn part_gradients_sum_to_the_whole_batch_gradient() {
        // loss = mean_i (w · x_i)² over 5 rows; d/dw = 2/5 Σ (w · x_i) x_i.
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![0.5f32, -1.0, 2.0], (3, 1), &dev).unwrap();
        let x = Tensor::new(
            &[
                [1f32, 2., 3.],
                [0.5, -1., 0.],
                [2., 0., -1.],
                [-3., 1., 1.],
                [0., 0.5, 2.],
            ],
            &dev,
        )
        .unwrap();
        let vars = vec![("w".to_string(), w.clone())];
        let threads = PartThreads::new(2).unwrap();
        let (grads, loss) = threads
            .summed_grads(&vars, 5, |r| {
                let part = x.narrow(0, r.start, r.len())?.matmul(w.as_tensor())?;
                Ok((part.sqr()?.sum_all()? / 5.0)?)
            })
            .unwrap();
        let xs: Vec<Vec<f32>> = x.to_vec2().unwrap();
        let wv = [0.5f32, -1.0, 2.0];
        let mut want = [0f64; 3];
        let mut want_loss = 0f64;
        for row in &xs {
            let y: f64 = row.iter().zip(wv).map(|(a, b)| (a * b) as f64).sum();
            want_loss += y * y / 5.0;
            for (k, a) in row.iter().enumerate() {
                want[k] += 2.0 / 5.0 * y * *a as f64;
            }
        }
        let got: Vec<f32> = grads
            .get(w.as_tensor())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (g, e) in got.iter().zip(want) {
            assert!((*g as f64 - e).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        assert!((loss - want_loss).abs() < 1e-5, "{loss} vs {want_loss}");
    }
}

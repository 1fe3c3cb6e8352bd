//! One AdamW step (gradient norm, clipping, update) over a parameter set shaped like the toy
//! world's UNet + text encoder: 4.8 M values, 3.2 M of them in the token-embedding table.
//! `cargo bench -p fmn-sd --bench adamw`
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Device, Tensor, Var};
use fmn_sd::train::optim::{AdamW, AdamWConfig};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let mut shapes: Vec<Vec<usize>> = vec![vec![49408, 64], vec![77, 64]];
    // ~1.7 M values in the 3×3 convolutions, linears and norms of a small UNet.
    for _ in 0..40 {
        shapes.push(vec![64, 64, 3, 3]);
        shapes.push(vec![64]);
        shapes.push(vec![64, 64]);
    }
    let vars: Vec<(String, Var)> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Ok((format!("p{i}"), Var::randn(0f32, 0.02, s.as_slice(), &dev)?)))
        .collect::<candle_core::Result<_>>()?;
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &dev)?;
    for (_, v) in &vars {
        loss = (loss + v.as_tensor().sqr()?.sum_all()?)?;
    }
    let grads = loss.backward()?;
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    opt.step(&grads, Some(1.0))?;
    let steps = 20;
    let start = Instant::now();
    for _ in 0..steps {
        opt.step(&grads, Some(1.0))?;
    }
    let per_step = start.elapsed().as_secs_f64() / steps as f64;
    println!(
        "AdamW step over {total} values in {} tensors: {:.1} ms",
        shapes.len(),
        per_step * 1e3
    );
    Ok(())
}

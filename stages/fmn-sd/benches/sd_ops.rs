//! The ops of an SD 1.5 UNet step at 512² (its first level: 64×64 latents, 4,096 tokens of
//! width 320, 8 heads of 40), each timed alone, forward and forward + backward, with frozen
//! weights and gradients for the activations (as in an inversion or attack step). Where the
//! whole step is slower than PyTorch's this says which op it is: `pytorch_sd_ops.py` times the
//! same ops in PyTorch, `compare.sh --ops` prints both.
//! `cargo bench -p fmn-sd --profile dev --bench sd_ops [-- --iters N] [-- --only NAME]`
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use common::random_weights;
use fmn_sd::models::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use std::time::Instant;

mod common;

/// A layer with frozen random weights.
fn frozen<M>(build: impl Fn(VarBuilder) -> Result<M>) -> Result<M> {
    let tensors = random_weights(&Device::Cpu, |vb| build(vb).map(drop))?;
    build(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
}

/// Best of `iters` runs (after one warm-up) of `f`.
fn best(iters: usize, f: &dyn Fn() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn randn(shape: &[usize]) -> Result<Tensor> {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu)
}

type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

fn main() -> Result<()> {
    fmn_core::tune_for_tensors();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    let iters: usize = arg("--iters").and_then(|v| v.parse().ok()).unwrap_or(3);
    let only = arg("--only");
    let scale = 1.0 / 40f64.sqrt();
    let conv = frozen(|vb| Conv2d::load(vb, 320, 320, 3, 1, 1))?;
    let group_norm = frozen(|vb| GroupNorm::load(vb, 32, 320, 1e-5))?;
    let layer_norm = frozen(|vb| LayerNorm::load(vb, 320, 1e-5))?;
    let geglu = frozen(|vb| Linear::load(vb, 320, 2560, true))?;
    let attention =
        move |a: &[Tensor]| fmn_ops::fused_attention::attention(&a[0], &a[1], &a[2], scale);
    // (name, input shapes, op): the inputs all take gradients.
    let ops: Vec<(&str, Vec<Vec<usize>>, Op)> = vec![
        (
            "self_attention_4096x40",
            vec![vec![8, 4096, 40]; 3],
            Box::new(attention),
        ),
        (
            "self_attention_1024x80",
            vec![vec![8, 1024, 80]; 3],
            Box::new(move |a: &[Tensor]| {
                fmn_ops::fused_attention::attention(&a[0], &a[1], &a[2], 1.0 / 80f64.sqrt())
            }),
        ),
        (
            "cross_attention_4096x77",
            vec![vec![8, 4096, 40], vec![8, 77, 40], vec![8, 77, 40]],
            Box::new(attention),
        ),
        (
            "conv3x3_320_64x64",
            vec![vec![1, 320, 64, 64]],
            Box::new(move |a: &[Tensor]| conv.forward(&a[0])),
        ),
        (
            "group_norm_320_64x64",
            vec![vec![1, 320, 64, 64]],
            Box::new(move |a: &[Tensor]| group_norm.forward(&a[0])),
        ),
        (
            "layer_norm_4096x320",
            vec![vec![1, 4096, 320]],
            Box::new(move |a: &[Tensor]| layer_norm.forward(&a[0])),
        ),
        (
            "linear_4096x320x2560",
            vec![vec![1, 4096, 320]],
            Box::new({
                let geglu = geglu.clone();
                move |a: &[Tensor]| geglu.forward(&a[0])
            }),
        ),
        (
            "geglu_4096x320",
            vec![vec![1, 4096, 320]],
            Box::new(move |a: &[Tensor]| fmn_ops::geglu::geglu(&geglu.forward(&a[0])?)),
        ),
    ];
    for (name, shapes, op) in &ops {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        let inputs: Vec<Var> = shapes
            .iter()
            .map(|s| Var::from_tensor(&randn(s)?))
            .collect::<Result<_>>()?;
        let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let plain: Vec<Tensor> = tensors.iter().map(|t| t.detach()).collect();
        let upstream = op(&plain)?.randn_like(0.0, 1.0)?;
        let forward = best(iters, &|| op(&plain).map(|_| ()))?;
        let both = best(iters, &|| {
            // A random upstream gradient: d(sum(out · g))/d out = g.
            let grads = (op(&tensors)? * &upstream)?.sum_all()?.backward()?;
            assert!(inputs.iter().all(|v| grads.get(v.as_tensor()).is_some()));
            Ok(())
        })?;
        println!("fmn op={name} forward={forward:.4}s forward_backward={both:.4}s");
    }
    Ok(())
}

//! Every UNet parameter receives a gradient, and it matches central finite differences (f64).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use fmn_sd::models::probes::AttentionRecorder;
use fmn_sd::models::unet::{UNet2DConditionModel, UNetConfig};

fn tiny_config(linear_proj: bool) -> UNetConfig {
    serde_json::from_value(serde_json::json!({
        "block_out_channels": [8, 16],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "attention_head_dim": [2, 4],
        "cross_attention_dim": 6,
        "norm_num_groups": 4,
        "use_linear_projection": linear_proj,
        "in_channels": 2,
        "out_channels": 2
    }))
    .unwrap()
}

/// Builds the model once to register every parameter, then gives each a random value.
fn random_model(cfg: &UNetConfig, seed: u64) -> (VarMap, UNet2DConditionModel) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
    let model = UNet2DConditionModel::new(vb, cfg).unwrap();
    let mut rng = fmn_ops::noise::NoiseRng::new(seed);
    for (_, var) in varmap.data().lock().unwrap().iter() {
        let noise = rng
            .randn(var.dims(), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        var.set(&(noise * 0.3).unwrap()).unwrap();
    }
    (varmap, model)
}

struct Inputs {
    sample: Tensor,
    t: Tensor,
    ctx: Tensor,
    out_w: Tensor,
}

fn inputs(seed: u64) -> Inputs {
    let dev = Device::Cpu;
    let mut rng = fmn_ops::noise::NoiseRng::new(seed);
    let mut r = |s: &[usize]| rng.randn(s, &dev).unwrap().to_dtype(DType::F64).unwrap();
    Inputs {
        sample: r(&[1, 2, 4, 4]),
        t: Tensor::new(&[321.5f64], &dev).unwrap(),
        ctx: r(&[1, 5, 6]),
        out_w: r(&[1, 2, 4, 4]),
    }
}

/// A scalar mixing the output and the squared attention probabilities (the re-steering loss).
fn loss(model: &UNet2DConditionModel, x: &Inputs) -> Tensor {
    let rec = AttentionRecorder::new();
    let out = model
        .forward_with_probe(&x.sample, &x.t, &x.ctx, Some(&rec))
        .unwrap();
    let mut total = (out * &x.out_w).unwrap().sum_all().unwrap();
    let records = rec.take();
    assert!(!records.is_empty());
    for r in records {
        total = (total + r.probs.sqr().unwrap().sum_all().unwrap()).unwrap();
    }
    total
}

fn check(linear_proj: bool) {
    let cfg = tiny_config(linear_proj);
    let (varmap, model) = random_model(&cfg, 7);
    let x = inputs(11);
    let grads = loss(&model, &x).backward().unwrap();
    let vars: Vec<(String, Var)> = {
        let data = varmap.data().lock().unwrap();
        let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert!(vars.len() > 40, "only {} parameters", vars.len());
    let eps = 1e-5;
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(g.iter().any(|v| *v != 0.0), "{name}: gradient is all zero");
        // Finite differences on the entry with the largest gradient and on entry 0.
        let argmax = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap()
            .0;
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for idx in [0, argmax] {
            let eval = |delta: f64| {
                let mut v = original.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&model, &x).to_scalar::<f64>().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(original.clone(), var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            let tol = 1e-5 * (1.0 + fd.abs().max(g[idx].abs()));
            assert!(
                (fd - g[idx]).abs() <= tol,
                "{name}[{idx}]: autograd {} vs finite difference {fd}",
                g[idx]
            );
        }
    }
}

#[test]
fn unet_gradients_match_finite_differences_conv_projection() {
    check(false);
}

#[test]
fn unet_gradients_match_finite_differences_linear_projection() {
    check(true);
}

#[test]
fn recorder_sees_every_cross_attention_by_module_path() {
    let cfg = tiny_config(false);
    let (_, model) = random_model(&cfg, 3);
    let x = inputs(5);
    let rec = AttentionRecorder::new();
    model
        .forward_with_probe(&x.sample, &x.t, &x.ctx, Some(&rec))
        .unwrap();
    let records = rec.take();
    let paths: Vec<&str> = records.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
            "mid_block.attentions.0.transformer_blocks.0.attn2",
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
            "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
        ]
    );
    // [batch, heads, query pixels, key tokens], rows summing to one.
    assert_eq!(records[0].probs.dims(), &[1, 2, 16, 5]);
    assert_eq!(records[1].probs.dims(), &[1, 4, 4, 5]);
    // Each map knows the grid of its queries: 4×4 in the first block, 2×2 in the middle.
    assert_eq!((records[0].height, records[0].width), (4, 4));
    assert_eq!((records[1].height, records[1].width), (2, 2));
    let row_sums = records[0]
        .probs
        .sum(3)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-12));
}

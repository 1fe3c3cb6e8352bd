//! Every parameter of a tiny random CLIP text encoder and VAE receives a gradient, and the
//! gradients match central finite differences in f64.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use fmn_ops::noise::NoiseRng;
use fmn_sd::models::clip::{ClipTextConfig, ClipTextModel};
use fmn_sd::models::vae::{AutoencoderKL, AutoencoderKLConfig};

const DEV: Device = Device::Cpu;

fn randn(rng: &mut NoiseRng, shape: &[usize]) -> Tensor {
    rng.randn(shape, &DEV)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// Gives every registered parameter a random value: norm scales near 1, biases near 0,
/// matrices and kernels ~ N(0, 1/fan_in).
fn randomize(varmap: &VarMap, seed: u64) -> Vec<(String, Var)> {
    let mut rng = NoiseRng::new(seed);
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &vars {
        let dims = var.dims().to_vec();
        let noise = randn(&mut rng, &dims);
        let value = if dims.len() == 1 {
            let is_norm_scale =
                name.ends_with(".weight") && (name.contains("norm") || name.contains("layer_norm"));
            if is_norm_scale {
                ((noise * 0.2).unwrap() + 1.0).unwrap()
            } else {
                (noise * 0.1).unwrap()
            }
        } else {
            let fan_in: usize = dims[1..].iter().product();
            (noise / (fan_in as f64).sqrt()).unwrap()
        };
        var.set(&value).unwrap();
    }
    vars
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn set_entry(var: &Var, index: usize, value: f64) {
    let mut data = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    data[index] = value;
    var.set(&Tensor::from_vec(data, var.dims(), &DEV).unwrap())
        .unwrap();
}

/// Checks that every var has a non-zero gradient, and compares the gradient with central
/// differences at the entry of largest gradient and two more entries of every var.
fn check_gradients(what: &str, vars: &[(String, Var)], loss: &dyn Fn() -> Tensor) {
    let grads = loss().backward().unwrap();
    let mut worst = 0f64;
    let mut checked = 0usize;
    let mut rng = NoiseRng::new(99);
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let gmax = g.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(gmax > 0.0, "{what}: zero gradient for {name}");
        let n = g.len();
        let argmax = (0..n)
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        let mut entries = vec![argmax, rng.below(0, n), rng.below(0, n)];
        entries.dedup();
        let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for i in entries {
            let h = 1e-5 * orig[i].abs().max(1.0);
            set_entry(var, i, orig[i] + h);
            let plus = scalar(&loss());
            set_entry(var, i, orig[i] - h);
            let minus = scalar(&loss());
            set_entry(var, i, orig[i]);
            let fd = (plus - minus) / (2.0 * h);
            let err = (fd - g[i]).abs();
            let rel = err / g[i].abs().max(fd.abs()).max(1e-3);
            assert!(
                rel <= 1e-4,
                "{what}: {name}[{i}]: analytic {} vs finite difference {fd} (rel {rel:e})",
                g[i]
            );
            worst = worst.max(rel);
            checked += 1;
        }
    }
    println!(
        "{what}: {} tensors with non-zero gradients, {checked} entries checked, worst relative error {worst:e}",
        vars.len()
    );
}

fn check_clip(hidden_act: &str) {
    let cfg: ClipTextConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 20,
        "hidden_size": 8,
        "intermediate_size": 12,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 6,
        "hidden_act": hidden_act,
    }))
    .unwrap();
    let varmap = VarMap::new();
    let model =
        ClipTextModel::new(VarBuilder::from_varmap(&varmap, DType::F64, &DEV), &cfg).unwrap();
    let mut vars = randomize(&varmap, 5);
    assert_eq!(
        vars.len(),
        4 + 16 * 2,
        "{:?}",
        vars.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    let mut rng = NoiseRng::new(6);
    let extra = Var::from_tensor(&(randn(&mut rng, &[2, 8]) * 0.5).unwrap()).unwrap();
    vars.push(("extra_rows".to_string(), extra.clone()));
    // every table row 0..20 appears at least once except a few; 20 and 21 are the extra rows
    let ids = Tensor::new(&[[0u32, 3, 20, 7, 21, 19], [1, 21, 5, 5, 12, 2]], &DEV).unwrap();
    let w = randn(&mut rng, &[2, 6, 8]);
    let loss = || {
        let out = model
            .forward_with_token_embeddings(&ids, extra.as_tensor())
            .unwrap();
        (out * &w).unwrap().sum_all().unwrap()
    };
    check_gradients(&format!("clip ({hidden_act})"), &vars, &loss);
}

#[test]
fn clip_quick_gelu_gradients_match_finite_differences() {
    check_clip("quick_gelu");
}

#[test]
fn clip_gelu_gradients_match_finite_differences() {
    check_clip("gelu");
}

#[test]
fn vae_gradients_match_finite_differences() {
    let cfg: AutoencoderKLConfig = serde_json::from_value(serde_json::json!({
        "_class_name": "AutoencoderKL",
        "block_out_channels": [4, 8],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 1,
        "latent_channels": 2,
        "norm_num_groups": 2,
    }))
    .unwrap();
    let varmap = VarMap::new();
    let vae = AutoencoderKL::new(VarBuilder::from_varmap(&varmap, DType::F64, &DEV), &cfg).unwrap();
    let vars = randomize(&varmap, 8);
    assert!(vars
        .iter()
        .any(|(n, _)| n.contains("mid_block.attentions.0.to_q")));
    assert!(vars.iter().any(|(n, _)| n == "quant_conv.weight"));
    let mut rng = NoiseRng::new(9);
    // non-square, so the padding / stride-2 / upsampling paths see distinct H and W
    let x = (randn(&mut rng, &[1, 3, 8, 12]) * 0.5)
        .unwrap()
        .tanh()
        .unwrap();
    let eps = randn(&mut rng, &[1, 2, 4, 6]);
    let w_img = randn(&mut rng, &[1, 3, 8, 12]);
    let w_logvar = randn(&mut rng, &[1, 2, 4, 6]);
    let loss = || {
        let post = vae.encode(&x).unwrap();
        let z = (post.mean() + (post.std() * &eps).unwrap()).unwrap();
        let img = vae.decode(&z).unwrap();
        let a = (img * &w_img).unwrap().sum_all().unwrap();
        let b = (post.logvar() * &w_logvar).unwrap().sum_all().unwrap();
        let c = post.kl().unwrap().sum_all().unwrap();
        ((a + b).unwrap() + (c * 0.1).unwrap()).unwrap()
    };
    check_gradients("vae", &vars, &loss);
}

/// Gradients flow back to the input image and latents (used when optimising images or latents).
#[test]
fn vae_input_gradients_match_finite_differences() {
    let cfg: AutoencoderKLConfig = serde_json::from_value(serde_json::json!({
        "block_out_channels": [4, 8],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 1,
        "latent_channels": 2,
        "norm_num_groups": 2,
    }))
    .unwrap();
    let varmap = VarMap::new();
    let vae = AutoencoderKL::new(VarBuilder::from_varmap(&varmap, DType::F64, &DEV), &cfg).unwrap();
    randomize(&varmap, 10);
    let mut rng = NoiseRng::new(11);
    let x = Var::from_tensor(&(randn(&mut rng, &[1, 3, 8, 8]) * 0.5).unwrap()).unwrap();
    let z = Var::from_tensor(&randn(&mut rng, &[1, 2, 4, 4])).unwrap();
    let w_mean = randn(&mut rng, &[1, 2, 4, 4]);
    let w_img = randn(&mut rng, &[1, 3, 8, 8]);
    let vars = vec![("x".to_string(), x.clone()), ("z".to_string(), z.clone())];
    let loss = || {
        let m = vae.encode(x.as_tensor()).unwrap().mean().clone();
        let img = vae.decode(z.as_tensor()).unwrap();
        ((m * &w_mean).unwrap().sum_all().unwrap() + (img * &w_img).unwrap().sum_all().unwrap())
            .unwrap()
    };
    check_gradients("vae inputs", &vars, &loss);
}

//! Seeded initialisation is reproducible and follows the modules' init hints.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device};
use fmn_sd::models::unet::{UNet2DConditionModel, UNetConfig};
use fmn_sd::train::init::SeededVars;

fn build(seed: u64) -> Vec<(String, Vec<f32>)> {
    let cfg: UNetConfig = serde_json::from_value(serde_json::json!({
        "block_out_channels": [8, 16], "layers_per_block": 1, "attention_head_dim": 2,
        "cross_attention_dim": 6, "norm_num_groups": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]
    }))
    .unwrap();
    let vars = SeededVars::new(seed);
    UNet2DConditionModel::new(vars.var_builder(DType::F32, &Device::Cpu), &cfg).unwrap();
    vars.sorted()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let a = build(5);
    assert_eq!(a, build(5));
    let b = build(6);
    let conv = |v: &[(String, Vec<f32>)]| {
        v.iter()
            .find(|(k, _)| k == "conv_in.weight")
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(conv(&a), conv(&b));
    // Hints: GroupNorm/LayerNorm weights start at one, their biases at zero.
    let get = |k: &str| &a.iter().find(|(n, _)| n == k).unwrap().1;
    assert!(get("conv_norm_out.weight").iter().all(|&v| v == 1.0));
    assert!(
        get("down_blocks.0.attentions.0.transformer_blocks.0.norm1.bias")
            .iter()
            .all(|&v| v == 0.0)
    );
    // Kaiming-normal conv kernel: std ≈ sqrt(2 / fan_in) with fan_in = 4 * 3 * 3.
    let w = conv(&a);
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    let expected = (2.0f32 / 36.0).sqrt();
    assert!(
        (std / expected - 1.0).abs() < 0.25,
        "std {std} vs {expected}"
    );
}

//! The solve-only forget (`fmn-resteer --steps 0`) at Stable Diffusion 1.5 size with random
//! weights: the product's own run ([`fmn_resteer::resteer`] at the default settings, as the
//! CLI calls it) on a model held in memory: the CLIP ViT-L/14 text encoder, the 32
//! cross-attention key/value weights, the built-in preservation lists. Prints each run's time
//! and the peak resident memory.
//!
//! `cargo bench -p fmn-resteer --bench solve_sd15 -- [--concepts N]` (1 and N objects; default
//! N 100: MACE's scale). `cold`: one object with an empty cache (the preservation lists
//! encoded into their Gram matrix, the cache written); `warm`: the cache read, the entries
//! naming the concepts taken out, the concepts' prompts, sibling anchors and solve, every delta.
//! Loading a model file is not part of it (BENCHMARKS.md#from-an-fp16-single-file-end-to-end).
//! Products go through OpenBLAS when `FMN_BLAS` names it, as in the stages.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fmn_resteer::config::{ConceptKind, ConceptSpec, ResteerConfig};
use fmn_resteer::preserve::GramCache;
use fmn_resteer::prior::PriorMemo;
use fmn_resteer::{resteer, Model};
use fmn_sd::io::single_file::infer;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::clip::{ClipTextConfig, ClipTextModel};
use fmn_sd::models::unet::UNetConfig;
use fmn_sd::sample::scheduler::{PredictionType, SchedulerConfig};
use fmn_sd::train::noise_schedule::NoiseSchedule;
use fmn_sd::train::scaffold::RunControl;
use std::collections::HashMap;
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// SD 1.5's UNet config (runwayml/stable-diffusion-v1-5 `unet/config.json`, the fields that
/// differ from the defaults).
fn unet_config() -> UNetConfig {
    serde_json::from_value(serde_json::json!({
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8,
        "cross_attention_dim": 768, "norm_num_groups": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D"]
    }))
    .unwrap()
}

/// SD 1.5's 32 cross-attention key/value weights `[inner, 768]`, random, diffusers' names.
fn kv_weights(dev: &Device) -> HashMap<String, Tensor> {
    let mut blocks = Vec::new();
    for (b, inner) in [320, 640, 1280].into_iter().enumerate() {
        for a in 0..2 {
            blocks.push((format!("down_blocks.{b}.attentions.{a}"), inner));
        }
    }
    blocks.push(("mid_block.attentions.0".to_string(), 1280));
    for (b, inner) in [(1, 1280), (2, 640), (3, 320)] {
        for a in 0..3 {
            blocks.push((format!("up_blocks.{b}.attentions.{a}"), inner));
        }
    }
    let mut weights = HashMap::new();
    for (block, inner) in blocks {
        for kv in ["to_k", "to_v"] {
            let name = format!("{block}.transformer_blocks.0.attn2.{kv}.weight");
            weights.insert(name, Tensor::randn(0f32, 0.02, (inner, 768), dev).unwrap());
        }
    }
    weights
}

fn main() {
    // As the stages do before they load anything (`fmn_sd_args::run_stage`).
    fmn_core::tune_for_tensors();
    let args: Vec<String> = std::env::args().collect();
    let concepts: usize = args
        .windows(2)
        .find(|w| w[0] == "--concepts")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(100);
    let dev = Device::Cpu;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // openai/clip-vit-large-patch14's text config (SD 1.x's text encoder).
    let te_cfg: ClipTextConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "hidden_act": "quick_gelu"
    }))
    .unwrap();
    let varmap = VarMap::new();
    let text_encoder =
        ClipTextModel::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &te_cfg).unwrap();
    let scheduler = SchedulerConfig::from_map(
        infer::scheduler_config(PredictionType::Epsilon)
            .as_object()
            .unwrap()
            .clone(),
    );
    let model = Model {
        tokenizer: ClipTokenizer::from_dir(&root.join("data/toy-model/tokenizer")).unwrap(),
        text_encoder,
        vae: None,
        unet_config: unet_config(),
        unet_weights: kv_weights(&dev),
        schedule: NoiseSchedule::from_config(&scheduler).unwrap(),
        scheduler,
        guidance: 7.5,
        preserve_list: None,
        prior: PriorMemo::default(),
    };
    assert_eq!(model.unet_weights.len(), 32);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = GramCache::new(cache_dir.path());
    for (label, n) in [("cold", 1), ("warm", 1), ("warm", concepts)] {
        let cfg = ResteerConfig {
            multi_concept: (0..n)
                .map(|i| ConceptSpec {
                    name: format!("concept{i}"),
                    kind: ConceptKind::Object,
                    images: None,
                    masks: None,
                    embedding: None,
                    adversarial: Vec::new(),
                })
                .collect(),
            ..ResteerConfig::default()
        };
        let t = Instant::now();
        let run = resteer(&model, &cfg, &dev, RunControl::silent(), Some(&cache)).unwrap();
        let preserved = run.preserved.expect("the default preserves");
        assert_eq!(preserved.cache_hit, label == "warm");
        assert_eq!(run.deltas.len(), 32);
        println!(
            "solve-only, SD 1.5 size, {} preserved prompts: {label}, {n} object(s): {:.2} s",
            preserved.prompts,
            t.elapsed().as_secs_f64()
        );
    }
    println!("peak RSS {:.0} MiB", peak_rss_mib());
}

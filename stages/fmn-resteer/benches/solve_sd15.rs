//! The solve-only forget (`fmn-resteer --steps 0`) at Stable Diffusion 1.5 size with random
//! weights: the CLIP ViT-L/14 text encoder, the 32 cross-attention key/value weights, the
//! built-in preservation lists. Prints the time of each part and the peak resident memory.
//!
//! `cargo bench -p fmn-resteer --bench solve_sd15 -- [--concepts N]` (1 and N concepts; default
//! N 100: MACE's scale). Parts: `cold` encodes the preservation lists into their Gram matrix (what the cache
//! then holds); `warm` reads it from the cache, takes out the entries naming the concepts,
//! encodes the concepts' prompts and their anchors, solves and forms every delta.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fmn_resteer::preserve::{preserved_gram, shipped_prompts, Encoder, GramCache};
use fmn_resteer::prompts::anchor_prompt;
use fmn_resteer::solve::AnchorSolve;
use fmn_resteer::ResteerError;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::clip::{ClipTextConfig, ClipTextModel};
use std::time::Instant;

struct Clip {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
}

impl Encoder for Clip {
    fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor, ResteerError> {
        let ids = Tensor::new(self.tokenizer.encode_batch(prompts)?, &Device::Cpu)?;
        Ok(self.model.forward(&ids)?.detach())
    }

    fn fingerprint(&self) -> Result<String, ResteerError> {
        Ok("random-clip-l".into())
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let concepts: usize = args
        .windows(2)
        .find(|w| w[0] == "--concepts")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(100);
    let dev = Device::Cpu;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // openai/clip-vit-large-patch14's text config (SD 1.x's text encoder).
    let cfg: ClipTextConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "hidden_act": "quick_gelu"
    }))
    .unwrap();
    let varmap = VarMap::new();
    let model =
        ClipTextModel::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &cfg).unwrap();
    let clip = Clip {
        tokenizer: ClipTokenizer::from_dir(&root.join("data/toy-model/tokenizer")).unwrap(),
        model,
    };
    // SD 1.5's attn2 blocks: 2 + 2 + 2 down, 1 mid, 3 + 3 + 3 up, inner widths below.
    let inner = [
        320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320,
    ];
    let weights: Vec<Tensor> = inner
        .iter()
        .flat_map(|&n| [n, n])
        .map(|n| Tensor::randn(0f32, 0.02, (n, 768), &dev).unwrap())
        .collect();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = GramCache::new(cache_dir.path());
    let prompts = shipped_prompts().unwrap();

    let t = Instant::now();
    let (_, summary) = preserved_gram(&clip, &prompts, &[], Some(&cache), &dev).unwrap();
    println!(
        "solve-only, SD 1.5 size, {} preserved prompts: cold (lists encoded, cache written) {:.1} s",
        summary.prompts,
        t.elapsed().as_secs_f64()
    );
    for concepts in [1, concepts] {
        warm(&clip, &prompts, &cache, &weights, concepts);
    }
    println!("peak RSS {:.0} MiB", peak_rss_mib());
}

/// A warm solve of `concepts` concepts: cache read, their prompts and anchors encoded, the
/// solve, every delta.
fn warm(clip: &Clip, prompts: &[String], cache: &GramCache, weights: &[Tensor], concepts: usize) {
    let dev = Device::Cpu;
    let names: Vec<String> = (0..concepts).map(|i| format!("concept{i}")).collect();
    let t = Instant::now();
    let (gram, summary) = preserved_gram(clip, prompts, &names, Some(cache), &dev).unwrap();
    assert!(summary.cache_hit);
    let read = t.elapsed().as_secs_f64();
    let templates = ["a photo of {}", "a picture of {}"];
    let mut rows = Vec::new();
    for name in &names {
        let texts: Vec<String> = templates
            .iter()
            .map(|t| t.replacen("{}", name, 1))
            .collect();
        let anchors: Vec<String> = templates.iter().map(|t| anchor_prompt(t, "")).collect();
        let c = clip.encode_prompts(&refs(&texts)).unwrap();
        let a = clip.encode_prompts(&refs(&anchors)).unwrap();
        let (b, n, d) = c.dims3().unwrap();
        rows.push((
            c.reshape((b * n, d)).unwrap(),
            a.reshape((b * n, d)).unwrap(),
        ));
    }
    let encode = t.elapsed().as_secs_f64() - read;
    let t2 = Instant::now();
    let mean = gram.unwrap().mean().unwrap();
    // The product's defaults: the balanced solve at `ResteerConfig::default()`'s weights.
    let defaults = fmn_resteer::config::ResteerConfig::default();
    let map = AnchorSolve::new(&rows, Some(&mean))
        .unwrap()
        .balanced(defaults.anchor_weight, defaults.preserve_weight)
        .unwrap()
        .map;
    let deltas: Vec<Tensor> = weights.iter().map(|w| w.matmul(&map).unwrap()).collect();
    let solve = t2.elapsed().as_secs_f64();
    let warm = t.elapsed().as_secs_f64();
    assert_eq!(deltas.len(), 32);
    println!(
        "  {concepts} concept(s): warm {warm:.2} s = cache read {read:.2} s + concept prompts {encode:.2} s + solve and deltas {solve:.2} s"
    );
}

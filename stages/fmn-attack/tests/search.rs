//! The prompt search on the toy model: its K/V distance against a per-layer reference computed
//! from the weight file (base weights for the target, base + patch deltas for the candidate),
//! the search's monotone seeded progress, and the search attack through the binary.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use fmn_attack::search::{self, BaseKv, KvDistance, SearchSettings};
use fmn_sd::io::patch::Patch;
use fmn_sd::sample::pipeline::StableDiffusion;
use std::collections::BTreeMap;
use std::process::Command;

fn toy() -> StableDiffusion {
    StableDiffusion::load(&fmn_core::default_model_dir(), &Device::Cpu, DType::F32).unwrap()
}

/// The toy UNet's `attn2.to_k` / `attn2.to_v` weights by layer name, from the file.
fn kv_from_file() -> BTreeMap<String, (Tensor, Tensor)> {
    let file = fmn_core::default_model_dir().join("unet/diffusion_pytorch_model.safetensors");
    let all = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    all.iter()
        .filter_map(|(name, k)| {
            let layer = name.strip_suffix(".attn2.to_k.weight")?;
            let v = &all[&format!("{layer}.attn2.to_v.weight")];
            Some((layer.to_string(), (k.clone(), v.clone())))
        })
        .collect()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
}

/// `x W^T` by loops, `x: [77, D]`, `w: [O, D]`.
fn project(x: &[Vec<f64>], w: &[Vec<f64>]) -> Vec<Vec<f64>> {
    x.iter()
        .map(|r| {
            w.iter()
                .map(|wr| r.iter().zip(wr).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect()
}

fn sq_dist(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y) * (x - y))
        .sum()
}

/// Mean over layers of (‖ΔK‖² + ‖ΔV‖²) / (‖K_t‖² + ‖V_t‖²) for one prompt pair.
fn reference(
    target_ctx: &Tensor,
    cand_ctx: &Tensor,
    base: &BTreeMap<String, (Tensor, Tensor)>,
    patched: &BTreeMap<String, (Tensor, Tensor)>,
) -> f64 {
    let t = rows(&target_ctx.squeeze(0).unwrap());
    let c = rows(&cand_ctx.squeeze(0).unwrap());
    let mut sum = 0.0;
    for (layer, (bk, bv)) in base {
        let (pk, pv) = &patched[layer];
        let (tk, tv) = (project(&t, &rows(bk)), project(&t, &rows(bv)));
        let (ck, cv) = (project(&c, &rows(pk)), project(&c, &rows(pv)));
        let norm = sq_dist(&tk, &zero_like(&tk)) + sq_dist(&tv, &zero_like(&tv));
        sum += (sq_dist(&ck, &tk) + sq_dist(&cv, &tv)) / norm;
    }
    sum / base.len() as f64
}

fn zero_like(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    a.iter().map(|r| vec![0.0; r.len()]).collect()
}

#[test]
fn the_distance_is_the_per_layer_key_value_gap_of_the_weight_file() {
    let base = toy();
    let layers = kv_from_file();
    assert!(layers.len() >= 2);
    // Every attn2 of the file, in the UNet's modules.
    let mut paths: Vec<String> = base
        .unet
        .cross_attentions()
        .iter()
        .map(|a| a.path().trim_end_matches(".attn2").to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, layers.keys().cloned().collect::<Vec<_>>());

    // A patch moving every attn2 K/V weight by a seeded random delta.
    let mut bases = BTreeMap::new();
    let mut deltas = BTreeMap::new();
    let mut patched = BTreeMap::new();
    for (i, (layer, (k, v))) in layers.iter().enumerate() {
        let dk = (fmn_testkit::seeded_randn_f64(k.dims(), 2 * i as u64)
            .to_dtype(DType::F32)
            .unwrap()
            * 0.05)
            .unwrap();
        let dv = (fmn_testkit::seeded_randn_f64(v.dims(), 2 * i as u64 + 1)
            .to_dtype(DType::F32)
            .unwrap()
            * 0.05)
            .unwrap();
        for (w, d, part) in [(k, &dk, "to_k"), (v, &dv, "to_v")] {
            let key = format!("unet.{layer}.attn2.{part}.weight");
            bases.insert(key.clone(), w.clone());
            deltas.insert(key, d.clone());
        }
        patched.insert(layer.clone(), ((k + &dk).unwrap(), (v + &dv).unwrap()));
    }
    let patch =
        Patch::from_deltas(&bases, deltas, vec![], serde_json::json!({}), DType::F32).unwrap();
    let model = StableDiffusion::load_with_patches(
        &fmn_core::default_model_dir(),
        &Device::Cpu,
        DType::F32,
        &[patch],
    )
    .unwrap();

    let target = "a photo of bob";
    let candidates = ["a photo of bob", "a photo of kiki", "a red square"];
    // Unpatched: the concept prompt is at distance 0; patched: not.
    let same = KvDistance::new(BaseKv::new(&base, &[target]).unwrap(), &base).unwrap();
    let d = same
        .score(&base, &[vec![candidates[0].to_string()]])
        .unwrap();
    assert!(d[0].abs() < 1e-10, "{d:?}");

    let distance = KvDistance::new(BaseKv::new(&base, &[target]).unwrap(), &model).unwrap();
    let sets: Vec<Vec<String>> = candidates.iter().map(|c| vec![c.to_string()]).collect();
    let got = distance.score(&model, &sets).unwrap();
    let target_ctx = base.encode_prompts(&[target]).unwrap();
    for (c, g) in candidates.iter().zip(&got) {
        let want = reference(
            &target_ctx,
            &model.encode_prompts(&[c]).unwrap(),
            &layers,
            &patched,
        );
        assert!(
            (g - want).abs() <= 1e-4 * want.max(1e-3),
            "{c}: {g} vs {want}"
        );
    }
    assert!(got[0] > 1e-4 && got[1] > got[0], "{got:?}");
}

#[test]
fn the_search_only_moves_closer_is_seeded_and_spells_whole_words() {
    let model = toy();
    let pool = model.tokenizer.whole_words("bob").unwrap();
    assert!(pool.len() > 10_000, "{}", pool.len());
    assert!(!pool.iter().any(|w| w == "bob"));
    for w in pool.iter().step_by(997) {
        assert_eq!(model.tokenizer.tokenize(w).unwrap().len(), 1, "{w}");
    }
    let templates = vec!["a photo of {}".to_string(), "{}".to_string()];
    let targets = ["a photo of bob", "bob"];
    let distance = KvDistance::new(BaseKv::new(&model, &targets).unwrap(), &model).unwrap();
    let s = SearchSettings {
        tokens: 2,
        rounds: 3,
        candidates: 48,
        seed: 7,
    };
    let found = search::search(&model, &distance, &templates, &pool, &s, |_| {}).unwrap();
    let again = search::search(&model, &distance, &templates, &pool, &s, |_| {}).unwrap();
    assert_eq!(found.words, again.words);
    assert_eq!(found.trace, again.trace);
    // The start and one set per candidate tried (those equal to the current word skipped).
    assert!(found.scored <= 1 + 3 * 2 * 48 && found.scored > 3 * 2 * 40);
    assert_eq!(found.words.len(), 2);
    assert_eq!(found.trace.len(), 3);
    assert!(found.trace.windows(2).all(|w| w[1] <= w[0]));
    assert!(found.distance < found.start_distance);
    // The reported distance is the words' score.
    let text = found.words.join(" ");
    let prompts: Vec<String> = templates.iter().map(|t| t.replace("{}", &text)).collect();
    let d = distance.score(&model, &[prompts]).unwrap()[0];
    assert!((d - found.distance).abs() < 1e-9);
}

#[test]
fn a_search_attack_needs_no_images_and_writes_its_words_and_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a");
    let res = Command::new(env!("CARGO_BIN_EXE_fmn-attack"))
        .args(["--concept", "bob", "--method", "search", "--tokens", "1"])
        .args(["--search-rounds", "1", "--search-candidates", "16"])
        .args(["--samples", "2", "--quiet", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let doc = fmn_testkit::json_of(&res);
    let a = &doc["attacks"][0];
    assert_eq!(doc["attacks"].as_array().unwrap().len(), 1);
    assert_eq!(a["name"], "k1-search-s0");
    assert_eq!(doc["chance"], serde_json::Value::Null);
    assert_eq!(a["method"], "search");
    let found: search::Found =
        serde_json::from_slice(&std::fs::read(out.join("k1-search-s0/search.json")).unwrap())
            .unwrap();
    assert_eq!(a["token_text"], found.words.join(" "));
    assert_eq!(a["final_loss"].as_f64().unwrap(), found.distance);
    // The words' token rows as an embedding (what --adversarial reads).
    let emb = fmn_sd::io::embedding::TokenEmbedding::load(
        &out.join("k1-search-s0/embedding.safetensors"),
    )
    .unwrap();
    assert_eq!(emb.tokens, ["<k1-search-s0-1>"]);
    let model = toy();
    let id = model.tokenizer.tokenize(&found.words[0]).unwrap();
    let row = model
        .text_encoder
        .token_embedding_table()
        .get(id[0] as usize)
        .unwrap();
    assert_eq!(
        emb.vectors.get(0).unwrap().to_vec1::<f32>().unwrap(),
        row.to_vec1::<f32>().unwrap()
    );
    let images = a["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for im in images {
        assert_eq!(im["prompt"], format!("a photo of {}", found.words[0]));
        assert!(out
            .join("k1-search-s0")
            .join(im["file"].as_str().unwrap())
            .is_file());
    }

    // The inversion needs images; a search of 0 sweeps tests nothing.
    for (args, says) in [
        (vec!["--method", "inversion"], "no images"),
        (
            vec!["--method", "search", "--search-rounds", "0"],
            "`search_rounds`",
        ),
    ] {
        let res = Command::new(env!("CARGO_BIN_EXE_fmn-attack"))
            .args(["--concept", "bob", "--quiet", "--out"])
            .arg(tmp.path().join("b"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(res.status.code(), Some(1));
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(err.contains(says), "{err}");
    }
    assert!(!tmp.path().join("b").exists());
}

#[test]
fn the_words_control_is_the_searchs_start_and_stays_out_of_the_asr() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a");
    let res = Command::new(env!("CARGO_BIN_EXE_fmn-attack"))
        .args([
            "--concept",
            "bob",
            "--method",
            "search,words",
            "--tokens",
            "2",
        ])
        .args(["--search-rounds", "1", "--search-candidates", "8"])
        .args(["--samples", "2", "--quiet", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let doc = fmn_testkit::json_of(&res);
    let attacks = doc["attacks"].as_array().unwrap();
    let names: Vec<&str> = attacks
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["k2-search-s0", "k2-words-s0"]);
    let (search, words) = (&attacks[0], &attacks[1]);
    assert_eq!(words["method"], "words");
    assert_eq!(words["steps"], 0);
    // The control's words are the search's start at the same seed.
    assert_eq!(words["initializers"], search["initializers"]);
    let start: Vec<&str> = search["initializers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(words["token_text"], start.join(" "));
    // The ASR and the strongest attack are the search's; the chance is the control's rate.
    assert_eq!(doc["asr"], search["rate"]);
    assert_eq!(doc["strongest"]["name"], "k2-search-s0");
    assert_eq!(doc["chance"], words["rate"]);

    let res = Command::new(env!("CARGO_BIN_EXE_fmn-attack"))
        .args(["--concept", "bob", "--method", "words", "--quiet", "--out"])
        .arg(tmp.path().join("b"))
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("names no attack"));
}

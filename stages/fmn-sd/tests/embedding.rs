//! Embedding files: the three layouts read back as written, and learned tokens whose vectors
//! are existing words' rows encode prompts exactly as those words do.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use fmn_sd::io::embedding::{EmbeddingLayout, EmbeddingMeta, TokenEmbedding};
use fmn_sd::sample::pipeline::StableDiffusion;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny")
}

fn load() -> StableDiffusion {
    StableDiffusion::load(&model_dir(), &Device::Cpu, DType::F32).unwrap()
}

fn word_row(sd: &StableDiffusion, word: &str) -> Tensor {
    let ids = sd.tokenizer.tokenize(word).unwrap();
    assert_eq!(ids.len(), 1, "{word} must be one token");
    sd.text_encoder
        .token_embedding_table()
        .get(ids[0] as usize)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn save_raw(path: &Path, tensors: &[(&str, Tensor)], meta: Option<HashMap<String, String>>) {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    fmn_sd::io::weights::save_safetensors_atomic(path, &map, meta).unwrap();
}

#[test]
fn learned_tokens_with_word_rows_encode_like_the_words() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = load();
    let (red, dog) = (word_row(&reference, "red"), word_row(&reference, "dog"));
    let want = reference.encode_prompts(&["a photo of a red dog"]).unwrap();

    // fmn layout: prompts write the tokens.
    let ours = tmp.path().join("ours.safetensors");
    TokenEmbedding::new(
        vec!["<s1>".into(), "<s2>".into()],
        Tensor::stack(&[&red, &dog], 0).unwrap(),
        EmbeddingMeta::default(),
    )
    .unwrap()
    .save(&ours, EmbeddingLayout::Fmn)
    .unwrap();
    let mut sd = load();
    let e = TokenEmbedding::load(&ours).unwrap();
    assert_eq!(e.tokens, ["<s1>", "<s2>"]);
    assert_eq!(e.trigger, None);
    sd.add_embeddings(vec![e], &["ours".into()]).unwrap();
    let got = sd.encode_prompts(&["a photo of a <s1> <s2>"]).unwrap();
    assert!(max_diff(&got, &want) < 1e-6);

    // AUTOMATIC1111 layout: the file name invokes both vectors.
    let a1111 = tmp.path().join("reddog.safetensors");
    save_raw(
        &a1111,
        &[("emb_params", Tensor::stack(&[&red, &dog], 0).unwrap())],
        None,
    );
    let mut sd = load();
    let e = TokenEmbedding::load(&a1111).unwrap();
    assert_eq!(e.tokens, ["reddog", "reddog_1"]);
    assert_eq!(
        e.expand("a photo of a reddog"),
        "a photo of a reddog reddog_1"
    );
    sd.add_embeddings(vec![e], &["a1111".into()]).unwrap();
    let got = sd.encode_prompts(&["a photo of a reddog"]).unwrap();
    assert!(max_diff(&got, &want) < 1e-6);

    // diffusers' learned_embeds: one tensor named by its token.
    let diffusers = tmp.path().join("learned_embeds.safetensors");
    save_raw(
        &diffusers,
        &[("<red-dog>", Tensor::stack(&[&red, &dog], 0).unwrap())],
        None,
    );
    let mut sd = load();
    let e = TokenEmbedding::load(&diffusers).unwrap();
    assert_eq!(e.tokens, ["<red-dog>", "<red-dog>_1"]);
    sd.add_embeddings(vec![e], &["diffusers".into()]).unwrap();
    let got = sd.encode_prompts(&["a photo of a <red-dog>"]).unwrap();
    assert!(max_diff(&got, &want) < 1e-6);

    // Prompts without the tokens are unchanged by adding them.
    let plain = sd.encode_prompts(&["a photo of a red dog"]).unwrap();
    assert!(max_diff(&plain, &want) < 1e-6);
}

#[test]
fn two_multi_token_embeddings_added_together_encode_like_their_words() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = load();
    let rows = |words: [&str; 2]| {
        let r: Vec<Tensor> = words.iter().map(|w| word_row(&reference, w)).collect();
        Tensor::stack(&r, 0).unwrap()
    };
    let mut embeddings = Vec::new();
    for (name, tokens, words) in [
        ("first", ["<a1>", "<a2>"], ["red", "dog"]),
        ("second", ["<b1>", "<b2>"], ["blue", "cat"]),
    ] {
        let path = tmp.path().join(format!("{name}.safetensors"));
        TokenEmbedding::new(
            tokens.iter().map(|t| t.to_string()).collect(),
            rows(words),
            EmbeddingMeta::default(),
        )
        .unwrap()
        .save(&path, EmbeddingLayout::Fmn)
        .unwrap();
        embeddings.push(TokenEmbedding::load(&path).unwrap());
    }
    let mut sd = load();
    sd.add_embeddings(embeddings, &["first".into(), "second".into()])
        .unwrap();
    let got = sd.encode_prompts(&["a <a1> <a2> and a <b1> <b2>"]).unwrap();
    let want = reference
        .encode_prompts(&["a red dog and a blue cat"])
        .unwrap();
    assert!(max_diff(&got, &want) < 1e-6);
}

#[test]
fn fmn_layout_round_trips_tokens_vectors_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("e.safetensors");
    let v = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
    let meta = EmbeddingMeta {
        source: "fmn".into(),
        initializers: vec!["dog".into(), "<rand-0.017>".into()],
        base_fingerprint: Some("abc".into()),
        settings: serde_json::json!({"steps": 5}),
        fmn_version: Some("9.9".into()),
    };
    let e = TokenEmbedding::new(vec!["<b>".into(), "<a>".into()], v.clone(), meta.clone()).unwrap();
    e.save(&path, EmbeddingLayout::Fmn).unwrap();
    let back = TokenEmbedding::load(&path).unwrap();
    assert_eq!(
        back.tokens,
        ["<b>", "<a>"],
        "the order comes from the metadata"
    );
    assert_eq!(back.meta, meta);
    assert_eq!(
        back.vectors.to_vec2::<f32>().unwrap(),
        v.to_vec2::<f32>().unwrap()
    );
    let raw = fmn_sd::io::weights::load_tensors(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        raw["<a>"].dims(),
        &[3],
        "one [D] tensor per token, under its name"
    );

    let a = tmp.path().join("mine.safetensors");
    e.save(&a, EmbeddingLayout::A1111).unwrap();
    let raw = fmn_sd::io::weights::load_tensors(&a, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(raw.keys().collect::<Vec<_>>(), ["emb_params"]);
    assert_eq!(
        TokenEmbedding::load(&a).unwrap().trigger.as_deref(),
        Some("mine")
    );
}

#[test]
fn bad_embedding_files_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let wide = tmp.path().join("wide.safetensors");
    save_raw(
        &wide,
        &[("<w>", Tensor::zeros(768, DType::F32, &dev).unwrap())],
        None,
    );
    let mut sd = load();
    let e = TokenEmbedding::load(&wide).unwrap();
    let err = sd
        .add_embeddings(vec![e], &["wide.safetensors".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wide.safetensors") && err.contains("768") && err.contains("32"),
        "{err}"
    );

    let taken = tmp.path().join("taken.safetensors");
    save_raw(
        &taken,
        &[("dog", Tensor::zeros(32, DType::F32, &dev).unwrap())],
        None,
    );
    let mut sd = load();
    let err = sd
        .add_embeddings(
            vec![TokenEmbedding::load(&taken).unwrap()],
            &["taken".into()],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("dog") && err.contains("already"), "{err}");

    let many = tmp.path().join("many.safetensors");
    let z = Tensor::zeros(32, DType::F32, &dev).unwrap();
    save_raw(&many, &[("x", z.clone()), ("y", z)], None);
    let err = TokenEmbedding::load(&many).unwrap_err().to_string();
    assert!(
        err.contains("many.safetensors") && err.contains("emb_params"),
        "{err}"
    );

    let pickle = tmp.path().join("e.pt");
    std::fs::write(&pickle, b"not read").unwrap();
    let err = TokenEmbedding::load(&pickle).unwrap_err().to_string();
    assert!(err.contains("pickle"), "{err}");

    let garbage = tmp.path().join("g.safetensors");
    std::fs::write(&garbage, b"garbage").unwrap();
    assert!(TokenEmbedding::load(&garbage).is_err());
}

//! The CLIP text encoder against transformers' outputs on the tiny fixture models
//! (`tests/fixtures/gen/make_sd_fixtures.py`).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_testkit::{fixtures, max_abs_diff, reference};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fmn_sd::models::clip::{ClipTextConfig, ClipTextModel};
use fmn_sd::SdError;
use std::collections::HashMap;

fn check_text_hidden(name: &str) {
    let dir = fixtures().join(name).join("text_encoder");
    let model = ClipTextModel::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.hidden_size(), 32);
    assert_eq!(model.token_embedding_table().dims(), &[49408, 32]);
    let refs = reference(name);
    let ids = refs["prompt_ids"].to_dtype(DType::U32).unwrap();
    let out = model.forward(&ids).unwrap();
    let err = max_abs_diff(&out, &refs["text_hidden"]);
    println!("{name}: text_hidden max abs error {err:e}");
    assert!(err <= 1e-4, "{name}: text_hidden max abs error {err}");
    // i64 ids (as the reference stores them) give the same result
    let out64 = model.forward(&refs["prompt_ids"]).unwrap();
    assert_eq!(max_abs_diff(&out, &out64), 0.0);
}

#[test]
fn sd1_text_hidden_matches_transformers() {
    check_text_hidden("sd1-tiny");
}

#[test]
fn sd2_text_hidden_matches_transformers() {
    check_text_hidden("sd2-tiny");
}

/// Checkpoints saved by transformers 4.x (all released SD text encoders) prefix every name
/// with `text_model.`.
#[test]
fn accepts_text_model_prefix() {
    let dir = fixtures().join("sd1-tiny/text_encoder");
    let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.contains_key("embeddings.token_embedding.weight"));
    let prefixed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (format!("text_model.{k}"), v))
        .collect();
    let vb = VarBuilder::from_tensors(prefixed, DType::F32, &Device::Cpu);
    let model = ClipTextModel::new(vb, &cfg).unwrap();
    let refs = reference("sd1-tiny");
    let out = model.forward(&refs["prompt_ids"]).unwrap();
    let err = max_abs_diff(&out, &refs["text_hidden"]);
    assert!(err <= 1e-4, "prefixed: {err}");
}

/// Ids past the table index `extra_rows`; rows equal to existing ones give the same output.
#[test]
fn extra_token_rows_replace_table_rows() {
    let model =
        ClipTextModel::load(&fixtures().join("sd1-tiny/text_encoder"), &Device::Cpu).unwrap();
    let refs = reference("sd1-tiny");
    let ids = refs["prompt_ids"].to_dtype(DType::U32).unwrap();
    let mut rows: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    let vocab = model.vocab_size() as u32;
    // "red" (736) -> new token 0, "circle" (7117) -> new token 1
    let table = model.token_embedding_table();
    let idx = Tensor::new(&[736u32, 7117], &Device::Cpu).unwrap();
    let extra = table.index_select(&idx, 0).unwrap();
    for row in rows.iter_mut() {
        for id in row.iter_mut() {
            if *id == 736 {
                *id = vocab;
            } else if *id == 7117 {
                *id = vocab + 1;
            }
        }
    }
    let new_ids = Tensor::new(rows, &Device::Cpu).unwrap();
    let out = model
        .forward_with_token_embeddings(&new_ids, &extra)
        .unwrap();
    assert!(max_abs_diff(&out, &refs["text_hidden"]) <= 1e-4);
    let plain = model.forward(&ids).unwrap();
    assert_eq!(max_abs_diff(&out, &plain), 0.0);
    // and different rows change exactly the rows that use them (row 1 has neither token)
    let other = (extra.clone() * 2.0).unwrap();
    let out2 = model
        .forward_with_token_embeddings(&new_ids, &other)
        .unwrap();
    assert!(max_abs_diff(&out2.get(0).unwrap(), &plain.get(0).unwrap()) > 1e-3);
    assert_eq!(
        max_abs_diff(&out2.get(1).unwrap(), &plain.get(1).unwrap()),
        0.0
    );
    // without extra rows those ids are out of range
    assert!(matches!(model.forward(&new_ids), Err(SdError::Invalid(_))));
    let too_big = Tensor::new(&[[vocab + 2]], &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward_with_token_embeddings(&too_big, &extra),
        Err(SdError::Invalid(_))
    ));
}

#[test]
fn rejects_bad_inputs_and_configs() {
    let model =
        ClipTextModel::load(&fixtures().join("sd2-tiny/text_encoder"), &Device::Cpu).unwrap();
    let long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(model.forward(&long), Err(SdError::Invalid(_))));
    let flat = Tensor::zeros(77, DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(model.forward(&flat), Err(SdError::Invalid(_))));
    // shorter sequences are fine (positions 0..T)
    let short = Tensor::new(&[[49406u32, 320, 49407]], &Device::Cpu).unwrap();
    assert_eq!(model.forward(&short).unwrap().dims(), &[1, 3, 32]);

    let cfg: ClipTextConfig = serde_json::from_str(
        r#"{"hidden_size": 32, "num_attention_heads": 4, "hidden_act": "gelu_new", "unknown": 1}"#,
    )
    .unwrap();
    match cfg.validate() {
        Err(SdError::Unsupported(msg)) => assert!(msg.contains("hidden_act"), "{msg}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let cfg: ClipTextConfig = serde_json::from_str(r#"{}"#).unwrap();
    assert_eq!(cfg.hidden_act, "quick_gelu");
    assert_eq!(cfg.max_position_embeddings, 77);
    cfg.validate().unwrap();
}

/// The reference files hold exactly the tensors their JSON describes (shapes, dtypes), and the
/// JSON is strict (serde_json) JSON. Every parity test of the library reads these files.
#[test]
fn reference_files_match_their_json() {
    for name in ["sd1-tiny", "sd2-tiny"] {
        let text =
            std::fs::read_to_string(fixtures().join(format!("{name}-reference.json"))).unwrap();
        let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
        let described = meta["tensors"].as_object().unwrap();
        let refs = reference(name);
        assert_eq!(refs.len(), described.len(), "{name}");
        for (key, info) in described {
            let t = refs
                .get(key)
                .unwrap_or_else(|| panic!("{name}: {key} missing"));
            let shape: Vec<usize> = serde_json::from_value(info["shape"].clone()).unwrap();
            assert_eq!(t.dims(), shape.as_slice(), "{name}: {key}");
            let dtype = match info["dtype"].as_str().unwrap() {
                "float32" => DType::F32,
                "int64" => DType::I64,
                other => panic!("{name}: {key}: dtype {other}"),
            };
            assert_eq!(t.dtype(), dtype, "{name}: {key}");
        }
        let ts = refs["unet_timestep"].to_scalar::<f32>().unwrap();
        assert_eq!(ts, 901.0);
        let modules = meta["attn2_modules"].as_array().unwrap();
        assert_eq!(modules.len(), 11, "{name}");
        for m in modules {
            let m = m.as_str().unwrap();
            assert!(refs.contains_key(&format!("attn_probs/{m}")));
            assert!(refs.contains_key(&format!("step0_attn/{m}")));
        }
    }
}

//! The VAE against diffusers' outputs on the tiny fixture models
//! (`tests/fixtures/gen/make_sd_fixtures.py`). sd1-tiny stores the mid-block attention under
//! the old names (query/key/value/proj_attn), sd2-tiny under the new ones, in fp16.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_testkit::{fixtures, max_abs_diff, reference};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fmn_ops::noise::NoiseRng;
use fmn_sd::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use fmn_sd::SdError;
use std::collections::HashMap;

fn check_vae(name: &str) {
    let vae = AutoencoderKL::load(&fixtures().join(name).join("vae"), &Device::Cpu).unwrap();
    assert_eq!(vae.downscale_factor(), 2);
    assert_eq!(vae.scaling_factor(), 0.18215);
    let refs = reference(name);

    let post = vae.encode(&refs["vae_input"]).unwrap();
    let e_mean = max_abs_diff(post.mean(), &refs["vae_mean"]);
    let e_logvar = max_abs_diff(post.logvar(), &refs["vae_logvar"]);
    let decoded = vae.decode(&refs["vae_mean"]).unwrap();
    let e_dec = max_abs_diff(&decoded, &refs["vae_decoded"]);
    println!("{name}: vae_mean {e_mean:e}, vae_logvar {e_logvar:e}, vae_decoded {e_dec:e}");
    assert!(e_mean <= 1e-4, "{name}: vae_mean max abs error {e_mean}");
    assert!(
        e_logvar <= 1e-4,
        "{name}: vae_logvar max abs error {e_logvar}"
    );
    assert!(e_dec <= 1e-4, "{name}: vae_decoded max abs error {e_dec}");

    let z = (&refs["ddim_latents"] / vae.scaling_factor()).unwrap();
    let image = ((vae.decode(&z).unwrap() / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap();
    let e_img = max_abs_diff(&image, &refs["ddim_image"]);
    println!("{name}: ddim_image {e_img:e}");
    assert!(
        e_img <= 1.0 / 255.0,
        "{name}: ddim_image max abs error {e_img}"
    );

    // sampling is mean + std * eps, reproducible from the seed
    let s1 = post.sample(&mut NoiseRng::new(3)).unwrap();
    let s2 = post.sample(&mut NoiseRng::new(3)).unwrap();
    assert_eq!(max_abs_diff(&s1, &s2), 0.0);
    let eps = NoiseRng::new(3)
        .randn(post.mean().dims(), &Device::Cpu)
        .unwrap();
    let expect = (post.mean() + (post.std() * eps).unwrap()).unwrap();
    assert!(max_abs_diff(&s1, &expect) <= 1e-6);
    assert_eq!(post.kl().unwrap().dims(), &[1]);
}

#[test]
fn sd1_vae_matches_diffusers() {
    check_vae("sd1-tiny");
}

#[test]
fn sd2_vae_matches_diffusers() {
    check_vae("sd2-tiny");
}

/// The sd1 fixture uses the old attention names; renamed to the new ones it decodes the same.
#[test]
fn old_and_new_attention_names_agree() {
    let dir = fixtures().join("sd1-tiny/vae");
    let cfg = AutoencoderKLConfig::from_file(&dir.join("config.json")).unwrap();
    let tensors = candle_core::safetensors::load(
        dir.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(tensors.contains_key("decoder.mid_block.attentions.0.proj_attn.weight"));
    assert!(!tensors.contains_key("decoder.mid_block.attentions.0.to_out.0.weight"));
    let renamed: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| {
            let k = k
                .replace(".query.", ".to_q.")
                .replace(".key.", ".to_k.")
                .replace(".value.", ".to_v.")
                .replace(".proj_attn.", ".to_out.0.");
            (k, v.clone())
        })
        .collect();
    let old = AutoencoderKL::new(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    let new = AutoencoderKL::new(
        VarBuilder::from_tensors(renamed, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    let refs = reference("sd1-tiny");
    let a = old.decode(&refs["vae_mean"]).unwrap();
    let b = new.decode(&refs["vae_mean"]).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

/// A tiny config with `overrides` (a JSON object's members, e.g. `"act_fn": "mish"`) applied.
fn tiny_config(overrides: &str) -> AutoencoderKLConfig {
    let mut value: serde_json::Value = serde_json::from_str(
        r#"{"_class_name": "AutoencoderKL", "block_out_channels": [8, 16], "norm_num_groups": 4,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
            "layers_per_block": 1, "latent_channels": 4, "some_future_key": [1, 2]}"#,
    )
    .unwrap();
    let extra: serde_json::Value = serde_json::from_str(&format!("{{{overrides}}}")).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::from_value(value).unwrap()
}

#[test]
fn optional_parts_follow_the_config() {
    let cfg = tiny_config(
        r#""use_quant_conv": false, "use_post_quant_conv": false, "mid_block_add_attention": false"#,
    );
    cfg.validate().unwrap();
    let varmap = VarMap::new();
    let vae = AutoencoderKL::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    assert!(!names.iter().any(|n| n.contains("quant_conv")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("attentions")), "{names:?}");
    let x = Tensor::zeros((2, 3, 8, 12), DType::F32, &Device::Cpu).unwrap();
    let post = vae.encode(&x).unwrap();
    assert_eq!(post.mean().dims(), &[2, 4, 4, 6]);
    assert_eq!(vae.decode(post.mean()).unwrap().dims(), &[2, 3, 8, 12]);

    let varmap = VarMap::new();
    let cfg = tiny_config("");
    AutoencoderKL::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    for n in [
        "quant_conv.weight",
        "post_quant_conv.weight",
        "encoder.mid_block.attentions.0.to_q.weight",
        "decoder.mid_block.attentions.0.to_out.0.weight",
        "encoder.down_blocks.0.downsamplers.0.conv.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.up_blocks.1.resnets.1.conv2.weight",
        "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
    ] {
        assert!(names.iter().any(|k| k == n), "missing {n}");
    }
}

#[test]
fn rejects_bad_inputs_and_configs() {
    let vae = AutoencoderKL::load(&fixtures().join("sd2-tiny/vae"), &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(vae.encode(&x), Err(SdError::Invalid(_))));
    let z = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(vae.decode(&z), Err(SdError::Invalid(_))));

    for (extra, key) in [
        (
            r#""down_block_types": ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]"#,
            "down_block_types",
        ),
        (
            r#""up_block_types": ["UpDecoderBlock2D"]"#,
            "up_block_types",
        ),
        (r#""act_fn": "mish""#, "act_fn"),
        (r#""_class_name": "AutoencoderTiny""#, "_class_name"),
        (r#""shift_factor": 0.1159"#, "shift_factor"),
        (r#""latents_mean": [0.1, 0.2]"#, "latents_mean"),
        (r#""norm_num_groups": 3"#, "norm_num_groups"),
    ] {
        match tiny_config(extra).validate() {
            Err(SdError::Unsupported(msg)) => assert!(msg.contains(key), "{key}: {msg}"),
            other => panic!("{key}: expected Unsupported, got {other:?}"),
        }
    }
    // null optional keys, as diffusers writes them, are fine
    tiny_config(
        r#""shift_factor": null, "latents_mean": null, "latents_std": null, "force_upcast": false"#,
    )
    .validate()
    .unwrap();
}
